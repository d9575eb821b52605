"""The proof of the decode path: KV-cache decoding == recomputing the whole sequence with the prefill graphs,
for prompts of several lengths up to SEQLEN; and the seed's decode mask breaks that equality."""

import numpy as np
import pytest

from chat.model import GlmModel

LOGIT_TOLERANCE = 0.08  # fp16 rounding of hidden states/KV at graph boundaries (~10 fp16 ulps at |logit| 15)


@pytest.fixture(autouse=True)
def emulator_fp32_math(monkeypatch):
    """The cache logic, not fp16 arithmetic, is under test: with every op rounded to fp16 (the emulator's
    default, like the TPU) decode and recomputation differ by an ulp or two, which flips exact near-ties (one
    at a 1-ulp gap in these prompts); tests/vendor compares decode with recomputation on the cmodel."""
    monkeypatch.setenv("SOPHON_SAIL_EMULATOR_MATH", "f32")


def prompt(length, vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


def decode_with_cache(model, prompt_ids, steps):
    """Greedy decode; returns (tokens, logits per generated token)."""
    model.prefill(prompt_ids)
    tokens, logits = [model.greedy()], [model.logits()]
    for _ in range(steps - 1):
        model.decode(tokens[-1])
        tokens.append(model.greedy())
        logits.append(model.logits())
    return tokens, logits


def recompute(model, sequence):
    """Logits and greedy token for the next position of `sequence`, from scratch with the prefill graphs."""
    model.prefill(sequence)
    return model.logits(), model.greedy()


@pytest.mark.parametrize(("length", "steps"), [(1, 12), (9, 16), (40, 20), (100, 29), (127, 2)])
def test_kv_cache_decode_equals_full_recomputation(standin, length, steps):
    cached, fresh = GlmModel(str(standin.bmodel)), GlmModel(str(standin.bmodel))
    ids = prompt(length, standin.config["vocab"], seed=length)
    tokens, logits = decode_with_cache(cached, ids, steps)
    assert len(ids) + steps - 1 <= standin.seqlen  # the last steps run with the cache (nearly) full
    for step in range(steps):
        reference_logits, reference_token = recompute(fresh, ids + tokens[:step])
        assert tokens[step] == reference_token, f"step {step}"
        np.testing.assert_allclose(
            logits[step], reference_logits, atol=LOGIT_TOLERANCE, err_msg=f"step {step}"
        )


def test_the_cache_really_fills_to_seqlen(standin):
    model = GlmModel(str(standin.bmodel))
    model.prefill(prompt(100, standin.config["vocab"], 0))
    for _ in range(standin.seqlen - 100):
        model.decode(model.greedy())
    assert model.filled == standin.seqlen
    with pytest.raises(Exception, match="KV cache full"):
        model.decode(1)


class SeedMaskModel(GlmModel):
    """The runtime with chatglm4.py's decode mask: 1 on [0, SEQLEN - token_length], 0 elsewhere, where
    token_length counts the token being fed (= filled + 1)."""

    def decode_mask(self):
        mask = np.zeros(self.seqlen + 1, dtype=np.float16)
        token_length = self.filled + 1
        mask[: self.seqlen - token_length + 1] = 1
        return mask


@pytest.mark.parametrize("length", [6, 30])
def test_the_seeds_decode_mask_gives_different_wrong_continuations(standin, length):
    ids = prompt(length, standin.config["vocab"], seed=100 + length)
    right, right_logits = decode_with_cache(GlmModel(str(standin.bmodel)), ids, 24)
    wrong, wrong_logits = decode_with_cache(SeedMaskModel(str(standin.bmodel)), ids, 24)
    assert right[0] == wrong[0]  # prefill is shared; only decode differs
    assert wrong != right
    first_diverging = next(
        i for i in range(1, 24) if abs(wrong_logits[i] - right_logits[i]).max() > LOGIT_TOLERANCE
    )
    assert first_diverging == 1  # the very first decode step already attends the empty slots


class OffByOneMaskModel(GlmModel):
    """LLM-TPU's fix (a8359aa): MASKED on [token_length, SEQLEN), 0 elsewhere, token_length counting the token
    being fed. It leaves slot `filled` attended although that slot is only written after the step (it still
    holds the prefill's padding key/value): an off-by-one that this model makes observable."""

    def decode_mask(self):
        mask = np.zeros(self.seqlen + 1, dtype=np.float16)
        mask[self.filled + 1 : self.seqlen] = -10000.0
        return mask


def test_the_llm_tpu_mask_is_off_by_one(standin):
    ids = prompt(20, standin.config["vocab"], seed=5)
    _, right_logits = decode_with_cache(GlmModel(str(standin.bmodel)), ids, 8)
    _, shifted_logits = decode_with_cache(OffByOneMaskModel(str(standin.bmodel)), ids, 8)
    assert max(abs(a - b).max() for a, b in zip(shifted_logits[1:], right_logits[1:], strict=True)) > 1.0
