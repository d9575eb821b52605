"""The emulator's GLM-4 graphs, driven by the runtime, equal transformers' GlmForCausalLM (model_type "glm")
built from the same weights: logits within fp16 tolerance and identical greedy continuations. The emulator
runs its fp32 math here (SOPHON_SAIL_EMULATOR_MATH=f32, fp16 only at graph boundaries): this compares the
GLM math, not the TPU's fp16 rounding, which tests/vendor compares with the cmodel.

Run with `make test-reference` (installs CPU torch + transformers: the `reference` extra). Without torch or
transformers these tests are skipped with that reason.
"""

import numpy as np
import pytest

from chat.model import GlmModel
from sim.tinyglm import build_standin

torch = pytest.importorskip("torch", reason="reference tests need CPU torch (make test-reference)")
transformers = pytest.importorskip(
    "transformers", reason="reference tests need transformers (make test-reference)"
)

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
LOGIT_TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def emulator_fp32_math(monkeypatch):
    monkeypatch.setenv("SOPHON_SAIL_EMULATOR_MATH", "f32")


def hf_config(config, **overrides):
    """GlmConfig for a stand-in: rope_theta = 10000 * rope_ratio (ChatGLM's RotaryEmbedding base), rotary on
    half of each head (partial_rotary_factor 0.5), QKV bias, RMSNorm eps, GQA."""
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0 * config["rope_ratio"],
        "partial_rotary_factor": 0.5,
    }
    rope.update(overrides.pop("rope", {}))
    return transformers.GlmConfig(
        vocab_size=config["padded_vocab"],
        hidden_size=config["hidden"],
        intermediate_size=config["ffn"],
        num_hidden_layers=config["layers"],
        num_attention_heads=config["heads"],
        num_key_value_heads=config["kv_heads"],
        head_dim=config["head_dim"],
        rms_norm_eps=config["eps"],
        max_position_embeddings=config["seqlen"],
        rope_parameters=rope,
        attention_bias=True,
        pad_token_id=0,
        **overrides,
    )


def hf_state_dict(config, arrays):
    """The stand-in's fp16 weights mapped onto transformers' names (query_key_value split into q/k/v)."""
    tensor = lambda name: torch.tensor(arrays[name].astype(np.float32))  # noqa: E731
    q, kv = config["heads"] * config["head_dim"], config["kv_heads"] * config["head_dim"]
    state = {"model.embed_tokens.weight": tensor("embedding"), "model.norm.weight": tensor("final_norm")}
    state["lm_head.weight"] = tensor("output_layer.weight")
    for layer in range(config["layers"]):
        ours, theirs = f"layers.{layer}.", f"model.layers.{layer}."
        weight, bias = tensor(ours + "qkv.weight"), tensor(ours + "qkv.bias")
        for name, rows in (
            ("q_proj", slice(0, q)),
            ("k_proj", slice(q, q + kv)),
            ("v_proj", slice(q + kv, None)),
        ):
            state[f"{theirs}self_attn.{name}.weight"] = weight[rows]
            state[f"{theirs}self_attn.{name}.bias"] = bias[rows]
        state[theirs + "self_attn.o_proj.weight"] = tensor(ours + "dense.weight")
        state[theirs + "mlp.gate_up_proj.weight"] = tensor(ours + "h_to_4h.weight")
        state[theirs + "mlp.down_proj.weight"] = tensor(ours + "4h_to_h.weight")
        state[theirs + "input_layernorm.weight"] = tensor(ours + "input_norm")
        state[theirs + "post_attention_layernorm.weight"] = tensor(ours + "post_norm")
    return state


def hf_model(standin, **overrides):
    from sophon import _bmodel

    header, arrays = _bmodel.read_bmodel(str(standin.bmodel))
    model = transformers.GlmForCausalLM(hf_config(header["config"], **overrides)).eval()
    model.load_state_dict(hf_state_dict(header["config"], arrays), strict=True)
    return model


def hf_last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


@pytest.fixture(scope="module", params=["int4", "int8", "int4-rope1"])
def standin_variant(request, tmp_path_factory):
    """The two mirror variants, and one with rope_ratio 1 where rotary angles are large at every pair."""
    variant, _, rope = request.param.partition("-")
    overrides = {"rope_ratio": 1.0} if rope else {}
    return build_standin(tmp_path_factory.mktemp(request.param), seed=3, variant=variant, **overrides)


def prompts(vocab):
    rng = np.random.default_rng(11)
    return [rng.integers(0, vocab, size=n).tolist() for n in (1, 7, 33, 90)]


def test_prefill_logits_equal_transformers(standin_variant):
    ours, theirs = GlmModel(str(standin_variant.bmodel)), hf_model(standin_variant)
    for ids in prompts(standin_variant.config["vocab"]):
        ours.prefill(ids)
        np.testing.assert_allclose(ours.logits(), hf_last_logits(theirs, ids), atol=LOGIT_TOLERANCE)


def kv_cache_greedy(model, ids, steps):
    """Our runtime's greedy decode through the KV-cache graphs; (tokens, logits per step)."""
    model.prefill(ids)
    tokens, logits = [model.greedy()], [model.logits()]
    while len(tokens) < steps:
        model.decode(tokens[-1])
        tokens.append(model.greedy())
        logits.append(model.logits())
    return tokens, logits


def test_greedy_continuations_with_the_kv_cache_equal_transformers(standin_variant):
    """Every decode step's logits match transformers on the same prefix, and the continuation equals
    transformers' greedy `generate()` token for token. The only allowed difference is at an near-tie
    (transformers' top two within the fp16 tolerance), where either choice is right; near-ties are rare."""
    ours, theirs = GlmModel(str(standin_variant.bmodel)), hf_model(standin_variant)
    near_ties = 0
    for ids in prompts(standin_variant.config["vocab"]):
        tokens, logits = kv_cache_greedy(ours, ids, 24)
        with torch.no_grad():
            all_logits = theirs(torch.tensor([ids + tokens])).logits[0].numpy()
            generated = theirs.generate(
                torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=0
            )
        expected = generated[0, len(ids) :].tolist()
        for step, step_logits in enumerate(logits):
            reference = all_logits[len(ids) - 1 + step]
            np.testing.assert_allclose(step_logits, reference, atol=LOGIT_TOLERANCE, err_msg=f"step {step}")
        if tokens != expected:
            step = next(i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b)
            reference = all_logits[len(ids) - 1 + step]
            assert reference.max() - reference[tokens[step]] < LOGIT_TOLERANCE, (
                f"not a near-tie at step {step}"
            )
            near_ties += 1
    assert near_ties <= 1


@pytest.mark.parametrize(
    "wrong",
    [
        {"rope": {"partial_rotary_factor": 1.0}},  # rotary over the whole head (Llama-style)
        {"rope": {"rope_theta": 10000.0}},  # transformers' default base, ignoring GLM-4's rope_ratio
    ],
)
def test_the_comparison_catches_a_wrong_rotary_configuration(standin, wrong):
    """Negative control: the same weights with a mis-converted rotary config disagree beyond tolerance."""
    ours, theirs = GlmModel(str(standin.bmodel)), hf_model(standin, **wrong)
    ids = prompts(standin.config["vocab"])[2]
    ours.prefill(ids)
    assert np.abs(ours.logits() - hf_last_logits(theirs, ids)).max() > 10 * LOGIT_TOLERANCE
