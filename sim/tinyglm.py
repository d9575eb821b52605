"""Stand-in ChatGLM4 assets for the simulator: a tiny real GLM-4 as a `.bmodel` the SAIL emulator loads, and
a matching `token_config/` (+ `token_config.zip`) in GLM-4's formats. Deterministic from a seed.

    from sim.tinyglm import build_standin
    standin = build_standin(tmp / "int4", seed=0, variant="int4")
    # standin.bmodel  -> glm4-9b_int4_1dev.bmodel  (graphs/dtypes of the real one, shapes scaled)
    # standin.token_dir -> token_config/ (tokenizer.model: base64 token + rank a line; tokenizer_config.json)
    # standin.token_zip -> token_config.zip (unzips to token_config/, like sophon-demo's)

On a (simulated) box: put `sim/sail` on `sys.path` so `import sophon.sail` is the emulator, then
`python3 -m chat --bmodel <standin.bmodel> --token <token_config dir>`.

The model: GLM-4 architecture scaled down (default 2 layers, hidden 64, 4 heads, 2 KV heads, head dim 16,
SwiGLU ffn 192, SEQLEN 128, rope_ratio 500, RMSNorm eps 1.5625e-7), random weights from the seed. The
variants differ like the real ones: linear weights quantised to uint4 or uint8 with zero points, in groups
of 64 inputs, exactly as tpu-mlir does it (`quantise`), and stored dequantised as fp16; embeddings and
norms are fp16. Same seed → same tokenizer and same float weights for both variants, so int4 and int8
differ only by quantisation. The output layer is shaped so that the random model writes readable text and
ends answers with EOS (see `float_weights`).

For the mirror: `build_mirror_assets(root)` lays both variants and token_config.zip out at sophon-demo's
dfss paths (`MIRROR_PATHS`). From the shell: `python -m sim.tinyglm OUT --variant int8 --pad-to BYTES`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import random
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import regex

from chat.tokenizer import GLM4_PATTERN, GLM4_SPECIAL_TOKENS
from sim.sail.sophon import _bmodel, _glm

VARIANTS = ("int4", "int8")
DEFAULT_CONFIG = {
    "layers": 2,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "ffn": 192,
    "seqlen": 128,
    "rope_ratio": 500.0,
    "eps": 1.5625e-07,
}
_WORDS = [
    "hello",
    "world",
    "the",
    "box",
    "edge",
    "chip",
    "model",
    "token",
    "memory",
    "heap",
    "board",
    "fleet",
    "chat",
    "answer",
    "question",
    "sophon",
    "glm",
    "python",
    "numpy",
    "device",
    "layer",
    "cache",
    "query",
    "value",
    "key",
    "shape",
    "graph",
    "tensor",
    "seed",
    "stand",
    "in",
    "tiny",
    "real",
]
_CJK = "你好世界我们是的人在有一个这中国和了不大小天地上下问答模型内存"
_EXTRA = ["😀", "🚀", "é", "ß", "Ω", "→", "\n", "\n\n", "  ", "123", "2024", "3.14", "!", "?", ",", "."]


@dataclass(frozen=True)
class StandIn:
    """Paths and facts of one generated stand-in (a bmodel + token config)."""

    bmodel: Path
    token_dir: Path
    token_zip: Path
    variant: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seqlen(self) -> int:
        return int(self.config["seqlen"])


def gpt2_byte_order() -> list[int]:
    """Bytes in GPT-2/GLM-4 rank order: printable ones first, so "!" is rank 0 and "\\n" rank 198."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    return printable + [b for b in range(256) if b not in set(printable)]


def _corpus(rng: random.Random, lines: int = 1500) -> str:
    pieces = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 8))]
        words += ["".join(rng.choice(_CJK) for _ in range(rng.randint(1, 3)))]
        words += [rng.choice(_EXTRA)]
        rng.shuffle(words)
        pieces.append(" ".join(words))
    return "\n".join(pieces)


def train_bpe_ranks(text: str, n_ranks: int) -> dict[bytes, int]:
    """Byte-level BPE: 256 byte tokens in GPT-2 order, then merges of the most frequent adjacent pair
    (ties broken by bytes, so the result is deterministic) until there are `n_ranks` tokens."""
    ranks = {bytes([b]): rank for rank, b in enumerate(gpt2_byte_order())}
    words = Counter(tuple(bytes([b]) for b in chunk.encode()) for chunk in regex.findall(GLM4_PATTERN, text))
    while len(ranks) < n_ranks:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))
        words = Counter(
            {
                (_merge(word, best, merged) if best[0] in word else word): count
                for word, count in words.items()
            }
        )
    return ranks


@functools.lru_cache(maxsize=8)
def _seed_ranks(seed: int, n_ranks: int) -> dict[bytes, int]:
    """The stand-in vocabulary of `seed` (cached: training is the slowest part of building a stand-in)."""
    return train_bpe_ranks(_corpus(random.Random(seed)), n_ranks)


def _merge(word: tuple, pair: tuple, merged: bytes) -> tuple:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_token_config(token_dir: Path, ranks: dict[bytes, int]) -> None:
    """Write `tokenizer.model` (base64 token + rank per line) and a GLM-4-style `tokenizer_config.json`."""
    token_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{base64.b64encode(tok).decode()} {rank}"
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    ]
    (token_dir / "tokenizer.model").write_text("\n".join(lines) + "\n")
    added = {
        str(len(ranks) + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(GLM4_SPECIAL_TOKENS)
    }
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": GLM4_SPECIAL_TOKENS[6:],
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 128000,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (token_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_glm4_shaped_token_config(token_dir: Path) -> Path:
    """A token config with glm-4-9b's size and its ids where tests and benchmarks look: 151,329 ranks,
    bytes in GPT-2 order ("\\n" = 198), "你好" = 109377 and "Hello" = 9703 (reached through BPE merges),
    specials from 151329 in the real tokenizer_config.json layout. The other ranks are filler tokens
    containing 0xFF, a byte that never occurs in UTF-8, so they never interfere with encoding text.
    Returns `token_dir`."""
    ranks = {bytes([b]): rank for rank, b in enumerate(gpt2_byte_order())}
    fixed = {"你好".encode(): 109377, b"Hello": 9703}
    for merge in ("你".encode()[:2], "你".encode(), "好".encode()[:2], "好".encode(), b"He", b"ll", b"Hell"):
        ranks[merge] = len(ranks)
    taken, rank, filler = set(fixed.values()), len(ranks), 0
    while len(ranks) < 151329 - len(fixed):
        if rank not in taken:
            ranks[b"\xff" + filler.to_bytes(3, "big")] = rank
            filler += 1
        rank += 1
    ranks.update(fixed)
    write_token_config(token_dir, ranks)
    return token_dir


def _zip_dir(token_dir: Path, zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(token_dir.iterdir()):
            info = zipfile.ZipInfo(f"{token_dir.name}/{path.name}", date_time=(2024, 8, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


EOS_GAIN = 1.2  # EOS output rows scaled so answers end by EOS after tens of tokens, like a chat model's


def text_token_ids(ranks: dict[bytes, int]) -> list[int]:
    """Ranks whose bytes are printable text on their own (not a partial UTF-8 sequence or a control byte)."""
    ids = []
    for token, rank in ranks.items():
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if all(c.isprintable() or c in "\n " for c in text):
            ids.append(rank)
    return sorted(ids)


def float_weights(
    config: dict[str, Any], seed: int, ranks: dict[bytes, int] | None = None
) -> dict[str, np.ndarray]:
    """Random float32 GLM-4 weights, named as the emulator's graphs read them.

    With `ranks`, the output layer is shaped so that the random model writes readable text: rows of tokens
    that are not text on their own, of special tokens other than the EOS set and of the padding ids are
    zero (their logit is 0, far below the winners), and the EOS rows are scaled by EOS_GAIN. The GLM math
    is unchanged; only the weight values are chosen."""
    rng = np.random.default_rng(seed)
    hidden, ffn = config["hidden"], config["ffn"]
    qkv_out = (config["heads"] + 2 * config["kv_heads"]) * config["head_dim"]

    def linear(out_dim: int, in_dim: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) * gain / np.sqrt(in_dim)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)

    weights = {"embedding": rng.standard_normal((config["padded_vocab"], hidden)).astype(np.float32)}
    for layer in range(config["layers"]):
        prefix = f"layers.{layer}."
        weights[prefix + "input_norm"] = norm()
        weights[prefix + "qkv.weight"] = linear(qkv_out, hidden, gain=2.0)
        weights[prefix + "qkv.bias"] = (0.1 * rng.standard_normal(qkv_out)).astype(np.float32)
        weights[prefix + "dense.weight"] = linear(hidden, config["heads"] * config["head_dim"])
        weights[prefix + "post_norm"] = norm()
        weights[prefix + "h_to_4h.weight"] = linear(2 * ffn, hidden)
        weights[prefix + "4h_to_h.weight"] = linear(hidden, ffn)
    weights["final_norm"] = norm()
    weights["output_layer.weight"] = linear(config["padded_vocab"], hidden, gain=4.0)
    if ranks is not None:
        output = weights["output_layer.weight"]
        eos = [
            len(ranks) + GLM4_SPECIAL_TOKENS.index(name)
            for name in ("<|endoftext|>", "<|user|>", "<|observation|>")
        ]
        keep = np.zeros(config["padded_vocab"], dtype=bool)
        keep[text_token_ids(ranks) + eos] = True
        output[~keep] = 0.0
        output[eos] *= EOS_GAIN
    return weights


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's std::round (halves away from zero), which tpu-mlir uses; numpy's round goes to even."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


QUANT_BITS = {"int4": 4, "int8": 8}
Q_GROUP_SIZE = 64  # model_deploy's --q_group_size: the int4 build passes 64, W8F16 takes the same default


def quantise(weight: np.ndarray, variant: str) -> np.ndarray:
    """Weight quantisation exactly as tpu-mlir 1.30.2's `model_deploy` does it for W4F16 and W8F16 (read back
    from the compiled graphs' weights: same integers, zero points and fp16 scales), returned dequantised as
    fp16 — the values the A16MatMul ops multiply with. `weight` is [out, in].

    Both are asymmetric per group of 64 inputs of each output row (W8F16 too: model_deploy applies its
    --q_group_size default of 64 to it unless --q_symmetric or another size is given), with n = 15 (uint4)
    or 255 (uint8): scale = max(max - min, 1e-5) / n, zero point = clamp(-round(min / scale), 0, n),
    q = clamp(round(w / scale) + zp, 0, n), value = (q - zp) * scale, rounding halves away from zero (C's
    std::round) and the scale stored as fp16."""
    if variant not in QUANT_BITS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    out_dim, in_dim = weight.shape
    levels = np.float32(2 ** QUANT_BITS[variant] - 1)
    group = Q_GROUP_SIZE if in_dim % Q_GROUP_SIZE == 0 else in_dim
    grouped = weight.astype(np.float32).reshape(out_dim, in_dim // group, group)
    low, high = grouped.min(axis=-1, keepdims=True), grouped.max(axis=-1, keepdims=True)
    scale = (np.maximum(high - low, np.float32(1e-5)) / levels).astype(np.float32)
    zero = np.clip(-_round_half_away(low / scale), 0, levels)
    q = np.clip(_round_half_away(grouped / scale) + zero, 0, levels)
    half_scale = scale.astype(np.float16).astype(np.float32)
    return ((q - zero) * half_scale).reshape(out_dim, in_dim).astype(np.float16)


def variant_weights(
    config: dict[str, Any], seed: int, variant: str, ranks: dict[bytes, int] | None = None
) -> dict[str, np.ndarray]:
    """The fp16 weights a `variant` stand-in holds: linear layers quantised, the rest cast to fp16."""
    weights = {}
    for name, value in float_weights(config, seed, ranks).items():
        is_linear = name.endswith(".weight") and value.ndim == 2
        weights[name] = quantise(value, variant) if is_linear else value.astype(np.float16)
    return weights


def model_config(vocab_ranks: int, **overrides: Any) -> dict[str, Any]:
    """DEFAULT_CONFIG with overrides, the real vocab size (ranks + specials) and a padded vocab (× 64)."""
    config = dict(DEFAULT_CONFIG, **overrides)
    config["vocab"] = vocab_ranks + len(GLM4_SPECIAL_TOKENS)
    config["padded_vocab"] = -(-config["vocab"] // 64) * 64
    if config["heads"] % config["kv_heads"] or config["head_dim"] % 4:
        raise ValueError("heads must be a multiple of kv_heads and head_dim a multiple of 4")
    return config


def pad_bmodel(path: Path, size: int) -> None:
    """Grow a stand-in bmodel with zeros to exactly `size` bytes; it stays loadable."""
    current = path.stat().st_size
    if size < current:
        raise ValueError(f"{path}: is {current} bytes, cannot pad to {size}")
    with open(path, "r+b") as out:
        out.truncate(size)


def build_standin(
    out_dir: Path,
    *,
    seed: int = 0,
    variant: str = "int4",
    pad_to: int = 0,
    bmodel_name: str | None = None,
    vocab_ranks: int = 600,
    chip: str = "BM1684X",
    **config_overrides: Any,
) -> StandIn:
    """Generate `<out_dir>/glm4-9b_<variant>_1dev.bmodel`, `<out_dir>/token_config/` and
    `<out_dir>/token_config.zip` deterministically from `seed` (same seed, same bytes).

    `pad_to` pads the bmodel with zeros to that many bytes (download/push tests); `config_overrides` change
    DEFAULT_CONFIG (e.g. `seqlen=64`, `layers=3`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _seed_ranks(seed, vocab_ranks)
    token_dir = out_dir / "token_config"
    write_token_config(token_dir, ranks)
    token_zip = out_dir / "token_config.zip"
    _zip_dir(token_dir, token_zip)
    config = model_config(len(ranks), **config_overrides)
    header = {
        "kind": "tinyglm4",
        "chip": chip,
        "variant": variant,
        "seed": seed,
        "config": config,
        "graphs": _glm.graph_specs(config),
    }
    bmodel = out_dir / (bmodel_name or f"glm4-9b_{variant}_1dev.bmodel")
    _bmodel.write_bmodel(str(bmodel), header, variant_weights(config, seed, variant, ranks), pad_to=pad_to)
    return StandIn(
        bmodel=bmodel, token_dir=token_dir, token_zip=token_zip, variant=variant, seed=seed, config=config
    )


def build_declared_standin(
    out_dir: Path, config: dict[str, Any], *, variant: str, device_bytes: int, chip: str = "BM1684X"
) -> Path:
    """`<out_dir>/<variant>.bmodel`: a stand-in that declares a real model's graphs (shapes from `config`:
    layers, hidden, heads, kv_heads, head_dim, ffn, seqlen, padded_vocab, vocab, rope_ratio, eps) and the
    device memory its compiled bmodel needs (`device_bytes`, what libbmrt would report), but holds no
    weights. It loads and the chat runtime allocates all its tensors, so the heap bound can be tested at a
    real model's size (GLM-4-9B's) without its weights; running a graph fails. Returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = {
        "kind": "tinyglm4",
        "chip": chip,
        "variant": variant,
        "seed": None,
        "config": dict(config),
        "graphs": _glm.graph_specs(config),
        "device_bytes": int(device_bytes),
    }
    path = out_dir / f"{variant}.bmodel"
    _bmodel.write_bmodel(str(path), header, {})
    return path


def write_hf_checkpoint(
    out_dir: Path, *, seed: int = 0, bf16: bool = False, vocab_ranks: int = 600, **config_overrides: Any
) -> Path:
    """The tiny GLM-4 as a Hugging Face-format directory in THUDM's glm-4-9b-chat layout (config.json with
    model_type chatglm, model.safetensors with `transformer.*` names, tokenizer.model and
    tokenizer_config.json): the input of `sophon-fleet model compile`. Same seed, same float weights as
    `build_standin`, so a compiled bmodel and the emulator's stand-in hold the same model. Returns out_dir.
    """
    from provision.compile.checkpoint import CONFIG_KEYS, hf_name
    from provision.compile.safetensors import write_safetensors

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _seed_ranks(seed, vocab_ranks)
    config = model_config(len(ranks), **config_overrides)
    write_token_config(out_dir, ranks)
    keys = dict(CONFIG_KEYS, seqlen="seq_length")  # what the reader reads, and the export's SEQLEN
    hf_config = {theirs: config[ours] for ours, theirs in keys.items()}
    hf_config.update(
        model_type="chatglm",
        architectures=["ChatGLMModel"],
        add_qkv_bias=True,
        multi_query_attention=True,
        rmsnorm=True,
        torch_dtype="bfloat16" if bf16 else "float32",
        eos_token_id=[
            len(ranks) + GLM4_SPECIAL_TOKENS.index(t)
            for t in ("<|endoftext|>", "<|user|>", "<|observation|>")
        ],
    )
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    weights = float_weights(config, seed, ranks)
    write_safetensors(out_dir / "model.safetensors", {hf_name(k): v for k, v in weights.items()}, bf16=bf16)
    return out_dir


# Where sophon-demo's download.sh finds the ChatGLM4 assets on the dfss server (its download.sh's paths).
MIRROR_PATHS = {
    "int4": "sophon-demo/ChatGLM4/models/BM1684X/glm4-9b_int4_1dev.bmodel",
    "int8": "sophon-demo/ChatGLM4/models/BM1684X/glm4-9b_int8_1dev.bmodel",
    "token_config": "sophon-demo/ChatGLM4/token_config.zip",
}


def build_mirror_assets(
    root: Path, *, seed: int = 0, pad_to: dict[str, int] | None = None
) -> dict[str, Path]:
    """Both stand-in variants and the shared token_config.zip at their dfss-style paths under `root`, for
    the simulator's mirror. `pad_to` maps a variant to a bmodel size in bytes. Returns {MIRROR_PATHS key:
    file}.
    """
    root = Path(root)
    work = root / ".standins"
    files = {}
    for variant in VARIANTS:
        standin = build_standin(
            work / variant, seed=seed, variant=variant, pad_to=(pad_to or {}).get(variant, 0)
        )
        files[variant] = _place(standin.bmodel, root / MIRROR_PATHS[variant])
    files["token_config"] = _place(standin.token_zip, root / MIRROR_PATHS["token_config"])
    shutil.rmtree(work)
    return files


def _place(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    source.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.tinyglm", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, default="int4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-to", type=int, default=0, help="pad the bmodel with zeros to this many bytes")
    parser.add_argument("--seqlen", type=int, default=DEFAULT_CONFIG["seqlen"])
    args = parser.parse_args(argv)
    standin = build_standin(
        args.out_dir, seed=args.seed, variant=args.variant, pad_to=args.pad_to, seqlen=args.seqlen
    )
    print(
        json.dumps(
            {
                "bmodel": str(standin.bmodel),
                "token_dir": str(standin.token_dir),
                "token_zip": str(standin.token_zip),
            }
        )
    )


if __name__ == "__main__":
    main()
