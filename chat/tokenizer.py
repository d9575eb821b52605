"""Tokenizers without torch or transformers.

GLM-4's `tokenizer.model` is not sentencepiece: it is a tiktoken rank file, one `<base64 token> <rank>` per
line (151,329 lines for glm-4-9b), used with GLM-4's pre-tokenisation pattern. Its special tokens follow the
ranks (`<|endoftext|>` = len(ranks) = 151329, …) and `tokenizer_config.json` lists them in
`added_tokens_decoder`; GLM-4's order is the default for any it does not list. ChatGLM2/3-style token configs
ship a sentencepiece `tokenizer.model` (a protobuf); it is detected and loaded with sentencepiece, with
ChatGLM3's special tokens after the pieces.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Dict, List

from .errors import TokenizerError

GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
GLM4_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
]
# ChatGLM3's SPTokenizer appends these after the sentencepiece pieces; `<sop>` is spelled `sop` there.
CHATGLM3_SPECIAL_TOKENS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
_ALIASES = {"<sop>": "sop", "<eop>": "eop"}
EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+$")


class Tokenizer:
    """What the runtime needs from a tokenizer: text <-> ids, each id's bytes, and the special ids."""

    special_ids = {}  # type: Dict[str, int]
    vocab_size = 0  # ids the tokenizer can produce: pieces/ranks + special tokens

    def encode(self, text: str) -> List[int]:
        """Ids of `text`; special-token spellings inside `text` are ordinary text, never control tokens."""
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one id stands for (b"" for special tokens), for byte-exact streaming."""
        raise NotImplementedError

    def decode(self, ids: List[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def special_id(self, name: str) -> int:
        """The id of special token `name` (GLM-4 spelling; ChatGLM3 aliases are resolved)."""
        if name in self.special_ids:
            return self.special_ids[name]
        if _ALIASES.get(name) in self.special_ids:
            return self.special_ids[_ALIASES[name]]
        raise TokenizerError("tokenizer has no special token %s" % name)

    def eos_ids(self) -> List[int]:
        """Ids that end an answer: `<|endoftext|>` (or sentencepiece's EOS), `<|user|>`, `<|observation|>`."""
        return [self.special_ids[name] for name in EOS_TOKENS if name in self.special_ids]

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids.values()


class TiktokenTokenizer(Tokenizer):
    """GLM-4's tokenizer: tiktoken BPE over `ranks`, GLM-4's split pattern, specials after the ranks."""

    def __init__(self, ranks: Dict[bytes, int], special_ids: Dict[str, int], name: str = "chatglm4") -> None:
        import tiktoken  # imported here so that `chat info` and the sentencepiece path do not need it

        self.special_ids = dict(special_ids)
        self._encoding = tiktoken.Encoding(
            name=name, pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids
        )
        self._specials = frozenset(self.special_ids.values())
        self._n_ranks = len(ranks)
        self.vocab_size = len(ranks) + len(self.special_ids)

    def encode(self, text: str) -> List[int]:
        return self._encoding.encode_ordinary(text)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._specials or not 0 <= token_id < self._n_ranks:
            return b""  # specials and the padding ids of the model's vocab (>= ranks + specials) are not text
        return self._encoding.decode_single_token_bytes(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._specials


class SentencePieceTokenizer(Tokenizer):
    """ChatGLM2/3-style sentencepiece tokenizer with ChatGLM3's special tokens after the pieces."""

    def __init__(self, model_path: str) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise TokenizerError("%s is a sentencepiece model; install sentencepiece to load it" % model_path)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except (RuntimeError, OSError) as error:
            raise TokenizerError("%s: not a loadable sentencepiece model: %s" % (model_path, error))
        pieces = self._sp.get_piece_size()
        self.special_ids = {name: pieces + i for i, name in enumerate(CHATGLM3_SPECIAL_TOKENS)}
        if self._sp.eos_id() >= 0:
            self.special_ids["<|endoftext|>"] = self._sp.eos_id()
        self._specials = frozenset(self.special_ids.values())
        self.vocab_size = pieces + len(CHATGLM3_SPECIAL_TOKENS)

    def encode(self, text: str) -> List[int]:
        return list(self._sp.encode(text))

    def token_bytes(self, token_id: int) -> bytes:
        if (
            token_id in self._specials
            or not 0 <= token_id < self._sp.get_piece_size()
            or self._sp.is_control(token_id)
        ):
            return b""
        piece = self._sp.id_to_piece(token_id)
        if self._sp.is_byte(token_id):
            return bytes([int(piece[3:-1], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._specials


def is_tiktoken_file(path: str) -> bool:
    """True if the file's first line looks like `<base64> <rank>` (GLM-4), False for a binary protobuf."""
    with open(path, "rb") as src:
        first = src.readline(4096).rstrip(b"\r\n")
    return bool(_RANK_LINE.match(first))


def read_ranks(path: str) -> Dict[bytes, int]:
    """Parse a tiktoken rank file; errors name the file and line.

    The fast path splits the whole file at once (151,329 lines load in a fraction of the per-line time,
    which matters on the boxes' A53 cores); any irregularity falls back to the strict per-line parser so
    that the error can name the line.
    """
    with open(path, "rb") as src:
        data = src.read()
    fields = data.split()
    lines = [line for line in data.splitlines() if line.strip()]
    ranks = None
    if len(fields) == 2 * len(lines) and _RANK_LINE.match(lines[-1] if lines else b""):
        try:
            ranks = {
                base64.b64decode(token, validate=True): int(rank)
                for token, rank in zip(fields[::2], fields[1::2])
            }
        except (ValueError, binascii.Error):
            ranks = None
    if ranks is None or len(ranks) != len(lines):
        ranks = _read_ranks_strictly(path, data)
    if not ranks:
        raise TokenizerError("%s: empty tokenizer model" % path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError("%s: ranks are not 0..%d without gaps or duplicates" % (path, len(ranks) - 1))
    return ranks


def _read_ranks_strictly(path: str, data: bytes) -> Dict[bytes, int]:
    ranks = {}
    for number, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not _RANK_LINE.match(line):
            raise TokenizerError(
                "%s:%d: expected '<base64 token> <rank>', got %r" % (path, number, line[:60])
            )
        token, rank = line.split()
        try:
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError("%s:%d: invalid base64 token %r" % (path, number, token[:60]))
    return ranks


def read_special_ids(config_path: str, n_ranks: int) -> Dict[str, int]:
    """GLM-4's special ids: `added_tokens_decoder` of tokenizer_config.json where present, else
    len(ranks) + GLM-4's index. A missing config file means all defaults; a broken one is an error."""
    special_ids = {name: n_ranks + i for i, name in enumerate(GLM4_SPECIAL_TOKENS)}
    if not os.path.exists(config_path):
        return special_ids
    try:
        with open(config_path, encoding="utf-8") as src:
            config = json.load(src)
        added = config.get("added_tokens_decoder", {})
        listed = {entry["content"]: int(token_id) for token_id, entry in added.items()}
    except (ValueError, AttributeError, KeyError, TypeError) as error:
        raise TokenizerError("%s: not a valid tokenizer config: %s" % (config_path, error))
    if "<|endoftext|>" in listed and listed["<|endoftext|>"] != n_ranks:
        raise TokenizerError(
            "%s puts <|endoftext|> at %d but tokenizer.model has %d ranks (GLM-4's specials follow the"
            " ranks): truncated or mismatched token config" % (config_path, listed["<|endoftext|>"], n_ranks)
        )
    special_ids.update(listed)
    clashing = sorted(name for name, token_id in special_ids.items() if token_id < n_ranks)
    if clashing:
        raise TokenizerError("%s: special tokens %s have ids inside the BPE ranks" % (config_path, clashing))
    return special_ids


def load_tokenizer(token_dir: str) -> Tokenizer:
    """Load the token config directory (`tokenizer.model` + optional `tokenizer_config.json`).

    Raises:
        TokenizerError: the directory or `tokenizer.model` is missing, or a file is malformed (named).
    """
    if not os.path.isdir(token_dir):
        raise TokenizerError("%s: token config directory not found" % token_dir)
    model_path = os.path.join(token_dir, "tokenizer.model")
    if not os.path.isfile(model_path):
        raise TokenizerError("%s: not found (the token config needs tokenizer.model)" % model_path)
    if not is_tiktoken_file(model_path):
        return SentencePieceTokenizer(model_path)
    ranks = read_ranks(model_path)
    special_ids = read_special_ids(os.path.join(token_dir, "tokenizer_config.json"), len(ranks))
    return TiktokenTokenizer(ranks, special_ids)
