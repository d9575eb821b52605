"""Token generation as a stream of events, UTF-8 safe, with the seed's FTL and TPS measurements.

`generate()` yields `Piece(text)` events and finally one `Done`. Text is produced from each token's bytes by
an incremental UTF-8 decoder, so a character split over several tokens (emoji, rare CJK) is emitted only when
complete — never a broken character or U+FFFD in the middle of a stream. FTL is the time from the start of
prefill to the first token; TPS is decode steps per second of decode time, as the seed measures them.
"""

from __future__ import annotations

import codecs
import random
import time
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Union

from .errors import ModelError
from .model import GlmModel, Sampling
from .template import Conversation
from .tokenizer import Tokenizer

STOP_EOS, STOP_LENGTH, STOP_CANCEL = "eos", "length", "cancel"


class Piece(NamedTuple):
    """Newly completed text of the answer."""

    text: str


class Done(NamedTuple):
    """The end of one answer: generated ids (without the stop token), full text, and measurements."""

    token_ids: List[int]
    text: str
    stop: str
    ftl_s: float
    tps: float

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


Event = Union[Piece, Done]


class StreamDecoder:
    """Bytes of tokens in, complete characters out (incomplete UTF-8 sequences wait for more bytes)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is left at the end; a truncated sequence becomes U+FFFD here and only here."""
        return self._decoder.decode(b"", final=True)


def generate(
    model: GlmModel,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Optional[Sampling] = None,
    cancelled: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.perf_counter,
    stop_at_eos: bool = True,
) -> Iterator[Event]:
    """Prefill `prompt_ids`, then decode until EOS, `max_new_tokens`, a full KV cache, or `cancelled()`
    (checked between tokens). Greedy unless `sampling` is given. `stop_at_eos=False` (selftest) generates
    exactly `max_new_tokens` unless the cache fills, so the measurement covers a fixed number of tokens."""
    eos = frozenset(tokenizer.eos_ids()) if stop_at_eos else frozenset()
    rng = random.Random(sampling.seed if sampling else None)
    history = list(prompt_ids)

    def next_token() -> int:
        return model.sample(history, sampling, rng) if sampling else model.greedy()

    started = clock()
    model.prefill(prompt_ids)
    token = next_token()
    ftl = clock() - started
    decoder, generated, steps, stop = StreamDecoder(), [], 0, STOP_LENGTH
    decode_started = clock()
    while True:
        if token in eos:
            stop = STOP_EOS
            break
        generated.append(token)
        history.append(token)
        text = decoder.feed(tokenizer.token_bytes(token))
        if text:
            yield Piece(text)
        if cancelled():
            stop = STOP_CANCEL
            break
        if len(generated) >= max_new_tokens or model.filled >= model.seqlen:
            break
        model.decode(token)
        steps += 1
        token = next_token()
    decode_time = clock() - decode_started
    tail = decoder.flush()
    if tail:
        yield Piece(tail)
    tps = steps / decode_time if steps and decode_time > 0 else 0.0
    yield Done(generated, tokenizer.decode(generated), stop, ftl, tps)


class ChatSession:
    """A model + tokenizer + conversation: `chat()` streams one answer and stores the finished turn once."""

    def __init__(self, model: GlmModel, tokenizer: Tokenizer, reserve: Optional[int] = None) -> None:
        if tokenizer.vocab_size > model.vocab:
            raise ModelError(
                "%s: vocabulary of %d ids is smaller than the token config's %d"
                " (wrong token config for this bmodel?)" % (model.path, model.vocab, tokenizer.vocab_size)
            )
        self.model = model
        self.tokenizer = tokenizer
        self.conversation = Conversation(tokenizer, model.seqlen, reserve or max(1, model.seqlen // 4))
        self.answers = 0
        self.tokens_generated = 0
        self.last = None  # type: Optional[Done]

    def chat(
        self,
        prompt: str,
        max_new_tokens: Optional[int] = None,
        sampling: Optional[Sampling] = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Event]:
        """Answer `prompt` in the context of the kept history. Raises PromptTooLongError before any event."""
        prompt_ids = self.conversation.prompt(prompt)
        limit = max_new_tokens or self.model.seqlen
        for event in generate(self.model, self.tokenizer, prompt_ids, limit, sampling, cancelled):
            if isinstance(event, Done):
                self.conversation.commit(prompt, event.text, event.token_ids)
                self.answers += 1
                self.tokens_generated += event.tokens
                self.last = event
            yield event

    def reset(self) -> None:
        self.conversation.reset()

    def stats(self) -> dict:
        last = self.last
        return {
            "answers": self.answers,
            "tokens": self.tokens_generated,
            "turns": len(self.conversation.turns),
            "last_ftl_s": round(last.ftl_s, 4) if last else None,
            "last_tps": round(last.tps, 3) if last else None,
        }
