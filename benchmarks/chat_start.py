"""Runtime start vs the seed's start: a fresh interpreter importing what it needs and loading a GLM-4-sized
tokenizer (151,329 ranks), wall time per start, median of N.

- runtime: `import chat.cli` (numpy, tiktoken, the runtime) + `chat.tokenizer.load_tokenizer(token_config)`.
- SEED (baseline, a lower bound of chatglm4.py's start): `import torch, transformers`, `from transformers
  import AutoTokenizer, PreTrainedTokenizer` (the seed loads its tokenizer with AutoTokenizer and
  trust_remote_code; tokenization_chatglm.py subclasses PreTrainedTokenizer and imports torch), then the
  tiktoken Encoding over the same tokenizer.model that ChatGLM4Tokenizer builds. The seed does more than
  this (remote-code import, AutoTokenizer resolution), so the real ratio is at least the one printed.

Needs torch and transformers in the venv (`make test-reference` installs them).

    .venv/bin/python benchmarks/chat_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.tinyglm import write_glm4_shaped_token_config

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = """
import chat.cli
from chat.tokenizer import load_tokenizer
assert load_tokenizer({token!r}).encode("你好") == [109377]
"""
SEED = """
import base64
import torch, transformers
from transformers import AutoTokenizer, PreTrainedTokenizer
import tiktoken
pat = {pattern!r}
ranks = {{}}
with open({token!r} + "/tokenizer.model", "rb") as f:
    for line in f:
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
special = {{t: len(ranks) + i for i, t in enumerate({specials!r})}}
enc = tiktoken.Encoding(name="my_tokenizer", pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
assert enc.encode("你好") == [109377]
"""


def start_time(code: str, repeat: int) -> float:
    """Median wall time of `python -c code` (interpreter start included), after one warm-up run."""
    runs = []
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        if attempt:
            runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        sys.exit(
            f"chat_start needs torch and transformers for the seed baseline ({error}): make test-reference"
        )
    from chat.tokenizer import GLM4_PATTERN, GLM4_SPECIAL_TOKENS

    with tempfile.TemporaryDirectory() as tmp:
        token = str(write_glm4_shaped_token_config(Path(tmp) / "token_config"))
        ours = start_time(RUNTIME.format(token=token), args.repeat)
        seed = start_time(
            SEED.format(token=token, pattern=GLM4_PATTERN, specials=GLM4_SPECIAL_TOKENS), args.repeat
        )
    print(f"start (fresh interpreter + imports + GLM-4-sized tokenizer load), median of {args.repeat}")
    print(f"  seed (torch + transformers + tokenizer, lower bound): {seed:7.3f} s")
    print(f"  runtime (chat + numpy + tiktoken + tokenizer):        {ours:7.3f} s")
    print(f"  ratio:                                                {seed / ours:7.1f} x")


if __name__ == "__main__":
    main()
