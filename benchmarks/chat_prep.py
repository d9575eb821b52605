"""Host-side input preparation at SEQLEN 512: the runtime (preallocated, vectorised numpy) vs the seed.

The baseline is sophon-demo chatglm4.py's algorithm, re-implemented below and labelled SEED: per prefill a
fresh SEQLEN*SEQLEN mask filled by a double Python loop over the prompt, fresh ids/position arrays; per
decoded token a fresh SEQLEN+1 mask filled by a Python loop over up to SEQLEN slots. Both sides produce the
arrays handed to `update_data` (fp16 as a uint16 view) and nothing else, so the device is not involved.

    .venv/bin/python benchmarks/chat_prep.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from chat.masks import MaskBuffers

SEQLEN = 512
# A conversation whose prompt lengths vary from turn to turn (each prefill differs from the previous one).
PROMPT_LENGTHS = (48, 200, 96, 300, 150, 256, 64, 400)


def seed_prefill_prep(tokens: list[int]) -> tuple:
    """SEED baseline: chatglm4.py forward_first's host-side work."""
    input_ids = np.zeros(SEQLEN, np.int32)
    input_ids[: min(SEQLEN, len(tokens))] = tokens
    token_length = len(tokens)
    input_ids = input_ids.reshape(1, -1)
    position_id = np.zeros(SEQLEN, np.int32)
    position_id[:token_length] = range(token_length)
    attention_mask = np.zeros(SEQLEN * SEQLEN, np.float16) - 1000.0
    for i in range(token_length):
        for j in range(i + 1):
            attention_mask[i * SEQLEN + j] = 0
    return input_ids, position_id.reshape(1, -1), attention_mask.reshape(1, 1, SEQLEN, SEQLEN).view(np.uint16)


def seed_decode_prep(token_length: int) -> tuple:
    """SEED baseline: chatglm4.py forward_next's host-side work (its mask values are the bug; the cost is
    what is measured here)."""
    attention_mask = np.zeros(SEQLEN + 1, np.float16)
    for i in range(SEQLEN - token_length + 1):
        attention_mask[i] = 1
    position_id = np.array(token_length - 1, np.int32)
    return position_id.reshape(1, 1), attention_mask.reshape(1, 1, 1, SEQLEN + 1).view(np.uint16)


class RuntimePrep:
    """What chat.model.GlmModel does on the host before uploading (same buffers, same calls)."""

    def __init__(self) -> None:
        self.masks = MaskBuffers(SEQLEN)
        self.ids = np.zeros(SEQLEN, dtype=np.int32)

    def prefill(self, tokens: list[int]) -> tuple:
        length = len(tokens)
        self.ids[:length] = tokens
        self.ids[length:] = 0
        positions = self.masks.prefill_positions(length).reshape(1, -1)
        return self.ids.reshape(1, -1), positions, self.masks.prefill_mask(length).view(np.uint16)

    def decode(self, filled: int) -> tuple:
        return self.masks.decode_position(filled).reshape(1, 1), self.masks.decode_mask(filled).view(
            np.uint16
        )


def timed(function, arguments, repeat: int) -> float:
    """Median over `repeat` runs of the total time to call `function` on every argument, in seconds."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for argument in arguments:
            function(argument)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 151329, size=n).tolist() for n in PROMPT_LENGTHS]
    runtime = RuntimePrep()
    for prompt in prompts:  # same arrays on both sides
        seed, ours = seed_prefill_prep(prompt), runtime.prefill(prompt)
        assert all(np.array_equal(a.ravel(), b.ravel()) for a, b in zip(seed, ours, strict=True))
    seed_s = timed(seed_prefill_prep, prompts, args.repeat) / len(prompts)
    ours_s = timed(runtime.prefill, prompts, args.repeat) / len(prompts)
    lengths = list(range(PROMPT_LENGTHS[0], SEQLEN))  # one answer growing to SEQLEN
    seed_token_s = timed(seed_decode_prep, [n + 1 for n in lengths], args.repeat) / len(lengths)
    ours_token_s = timed(runtime.decode, lengths, args.repeat) / len(lengths)
    print(
        f"prefill preparation, SEQLEN {SEQLEN}, prompts of {PROMPT_LENGTHS} tokens (median of {args.repeat})"
    )
    print(f"  seed algorithm (baseline): {seed_s * 1e3:9.3f} ms per prompt")
    print(f"  runtime (chat/masks.py):   {ours_s * 1e3:9.3f} ms per prompt")
    print(f"  ratio:                     {seed_s / ours_s:9.1f} x")
    print(f"per-token host overhead (decode mask + position id), filled {lengths[0]}..{SEQLEN - 1}")
    print(f"  seed algorithm (baseline): {seed_token_s * 1e6:9.2f} us per token")
    print(f"  runtime (chat/masks.py):   {ours_token_s * 1e6:9.2f} us per token")
    print(f"  ratio:                     {seed_token_s / ours_token_s:9.1f} x")


if __name__ == "__main__":
    main()
