"""Generation: UTF-8 safe streaming, stop reasons, sampling through penalty_sample_head, FTL/TPS."""

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.generate import Done, Piece, StreamDecoder, generate
from chat.model import Sampling


def test_an_emoji_split_over_tokens_is_emitted_only_when_complete():
    decoder = StreamDecoder()
    data = "a😀b".encode()
    assert [decoder.feed(data[i : i + 1]) for i in range(len(data))] == ["a", "", "", "", "😀", "b"]
    assert decoder.flush() == ""


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=1, max_size=40), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12)
)
def test_any_byte_split_of_valid_text_streams_whole_characters(text, cuts):
    data = text.encode()
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    decoder = StreamDecoder()
    pieces = [decoder.feed(data[a:b]) for a, b in itertools.pairwise(points)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces if "\ufffd" not in text)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 你好世界😀🚀𠀀é\n")), min_size=1, max_size=30))
def test_standin_tokens_stream_without_broken_characters(tokenizer, text):
    decoder = StreamDecoder()
    pieces = [decoder.feed(tokenizer.token_bytes(i)) for i in tokenizer.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


class FixedEos:
    """The stand-in tokenizer, with `eos` as the only EOS id."""

    def __init__(self, tokenizer, eos):
        self._tokenizer, self._eos = tokenizer, eos

    def eos_ids(self):
        return [self._eos]

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_stop_reasons_eos_length_and_cancel(model, tokenizer):
    prompt = tokenizer.encode("hello box")
    greedy = list(generate(model, tokenizer, prompt, 5))
    first_token = greedy[-1].token_ids[0]
    assert greedy[-1].stop == "length" and greedy[-1].tokens == 5
    eos = list(generate(model, FixedEos(tokenizer, first_token), prompt, 5))
    assert eos == [Done([], "", "eos", eos[-1].ftl_s, 0.0)]
    calls = itertools.count()
    cancelled = list(generate(model, tokenizer, prompt, 50, cancelled=lambda: next(calls) >= 2))
    assert cancelled[-1].stop == "cancel" and cancelled[-1].tokens == 3
    assert cancelled[-1].token_ids == greedy[-1].token_ids[:3]


def test_generation_stops_when_the_cache_is_full(model, tokenizer, standin):
    prompt = [5] * (standin.seqlen - 10)
    done = list(generate(model, tokenizer, prompt, 1000))[-1]
    assert done.stop == "length" and done.tokens == 11 and model.filled == standin.seqlen


def test_ftl_and_tps_are_measured_like_the_seed(model, tokenizer):
    ticks = iter(range(100))
    done = list(generate(model, tokenizer, tokenizer.encode("hi"), 4, clock=lambda: float(next(ticks))))[-1]
    # clock: start=0, after first token=1 (FTL 1 s), decode start=2, 3 decode steps, end=3 → 3 steps / 1 s
    assert done.ftl_s == 1.0 and done.tps == 3.0


def test_penalty_sampling_is_repeatable_by_seed_and_draws_from_the_heads_top_50(model, tokenizer):
    prompt = tokenizer.encode("edge box chat")
    sampling = Sampling(temperature=1.0, top_p=0.9, penalty=1.1, seed=42)
    runs = [list(generate(model, tokenizer, prompt, 12, sampling))[-1].token_ids for _ in range(2)]
    assert runs[0] == runs[1]
    other = list(generate(model, tokenizer, prompt, 12, sampling._replace(seed=7)))[-1].token_ids
    greedy = list(generate(model, tokenizer, prompt, 12))[-1].token_ids
    assert other != runs[0]  # another seed draws another answer
    assert greedy != runs[0]  # and sampling is not greedy decoding
    model.prefill(prompt)
    allowed = set(model.logits().argsort()[::-1][:50].tolist())
    model.prefill(prompt)
    assert model.sample(prompt, sampling, random.Random(3)) in allowed


def test_cold_sampling_equals_greedy(model, tokenizer):
    prompt = tokenizer.encode("hello world")
    cold = Sampling(temperature=1e-4, top_p=1e-6, penalty=1.0, seed=1)
    assert [e for e in generate(model, tokenizer, prompt, 8, cold) if isinstance(e, Piece)] == [
        e for e in generate(model, tokenizer, prompt, 8) if isinstance(e, Piece)
    ]
