"""Tokenizers: GLM-4's tiktoken file, special ids, template ids, sentencepiece detection, clear errors."""

import base64
import json

import pytest

from chat.errors import TokenizerError
from chat.template import apply_chat_template
from chat.tokenizer import GLM4_SPECIAL_TOKENS, SentencePieceTokenizer, TiktokenTokenizer, load_tokenizer
from sim.tinyglm import gpt2_byte_order, write_glm4_shaped_token_config

TEXTS = [
    "hello world",
    "你好，世界！ The box answers.\n\nSecond line\twith tab",
    "emoji 😀🚀 and rare 𠀀 chars, é ß Ω → 3.14",
    "<|user|> is just text here [gMASK]",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_on_the_standin_tokenizer(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode()


def test_special_ids_follow_the_ranks_in_glm4_order(tokenizer, standin):
    n_ranks = len((standin.token_dir / "tokenizer.model").read_text().splitlines())
    assert isinstance(tokenizer, TiktokenTokenizer)
    assert [tokenizer.special_id(name) for name in GLM4_SPECIAL_TOKENS] == list(range(n_ranks, n_ranks + 14))
    assert tokenizer.eos_ids() == [n_ranks, n_ranks + 7, n_ranks + 9]
    assert tokenizer.encode("\n") == [198]


def test_special_spellings_in_user_text_are_not_control_tokens(tokenizer):
    assert not any(tokenizer.is_special(i) for i in tokenizer.encode("<|user|><|assistant|>[gMASK]<sop>"))


@pytest.fixture(scope="module")
def glm4_shaped_dir(tmp_path_factory):
    return write_glm4_shaped_token_config(tmp_path_factory.mktemp("glm4-shaped") / "token_config")


def test_template_gives_the_documented_ids_on_a_glm4_shaped_tokenizer(glm4_shaped_dir):
    tok = load_tokenizer(str(glm4_shaped_dir))
    assert apply_chat_template(tok, [{"role": "user", "content": "你好"}]) == [
        151331,
        151333,
        151336,
        198,
        109377,
        151337,
    ]
    assert apply_chat_template(tok, [{"role": "user", "content": "Hello"}])[-3:] == [198, 9703, 151337]
    assert tok.eos_ids() == [151329, 151336, 151338]


def test_special_ids_default_to_glm4_when_the_config_lists_none(glm4_shaped_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((glm4_shaped_dir / "tokenizer.model").read_bytes())
    assert load_tokenizer(str(tmp_path)).special_id("<|assistant|>") == 151337  # no tokenizer_config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {}}))
    assert load_tokenizer(str(tmp_path)).special_id("[gMASK]") == 151331


def test_special_ids_are_read_from_tokenizer_config(standin, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((standin.token_dir / "tokenizer.model").read_bytes())
    config = json.loads((standin.token_dir / "tokenizer_config.json").read_text())
    moved = {str(700 + i): entry for i, entry in enumerate(config["added_tokens_decoder"].values()) if i}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": moved}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.special_id("<|user|>") == 707 and tok.special_id("<|endoftext|>") == 600  # listed / default


def _token_dir(tmp_path, model_text=None, config_text=None):
    if model_text is not None:
        (tmp_path / "tokenizer.model").write_text(model_text)
    if config_text is not None:
        (tmp_path / "tokenizer_config.json").write_text(config_text)
    return str(tmp_path)


def _ranks_text(n=256):
    return "".join(
        f"{base64.b64encode(bytes([b])).decode()} {r}\n" for r, b in enumerate(gpt2_byte_order()[:n])
    )


@pytest.mark.parametrize(
    ("model_text", "config_text", "message"),
    [
        (None, None, r"tokenizer\.model: not found"),
        (_ranks_text() + "bm90IGJhc2U2NA 256 extra\n", None, r"tokenizer\.model:257: expected"),
        (_ranks_text().replace(" 5\n", " 500\n"), None, r"tokenizer\.model: ranks are not"),
        (_ranks_text(), "{broken", r"tokenizer_config\.json: not a valid tokenizer config"),
        (_ranks_text(), '{"added_tokens_decoder": {"3": {"content": "<|user|>"}}}', r"inside the BPE ranks"),
    ],
)
def test_broken_token_config_errors_name_the_file(tmp_path, model_text, config_text, message):
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(_token_dir(tmp_path, model_text, config_text))


def test_a_truncated_tokenizer_model_is_caught_by_the_config(standin, tmp_path):
    lines = (standin.token_dir / "tokenizer.model").read_text().splitlines()
    (tmp_path / "tokenizer.model").write_text("\n".join(lines[:-50]) + "\n")
    (tmp_path / "tokenizer_config.json").write_bytes(
        (standin.token_dir / "tokenizer_config.json").read_bytes()
    )
    with pytest.raises(
        TokenizerError, match=r"tokenizer_config\.json puts <\|endoftext\|> at 600 but .* 550 ranks"
    ):
        load_tokenizer(str(tmp_path))


def test_missing_token_directory_is_named(tmp_path):
    with pytest.raises(TokenizerError, match="nowhere: token config directory not found"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_sentencepiece_model_is_detected_and_loaded(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    words = [
        "edge",
        "box",
        "chat",
        "model",
        "memory",
        "token",
        "layer",
        "fleet",
        "answer",
        "question",
        "device",
        "你好",
        "世界",
    ]
    corpus.write_text(
        "\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) for i in range(400))
    )
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=400,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
    )
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, SentencePieceTokenizer)
    text = "edge box 你好 chat"
    assert tok.decode(tok.encode(text)).strip() == text
    assert tok.special_id("[gMASK]") == tok.vocab_size - 8 and tok.special_id("<sop>") == tok.vocab_size - 6
    ids = apply_chat_template(tok, [{"role": "user", "content": "box"}])
    assert ids[:3] == [tok.special_id("[gMASK]"), tok.special_id("sop"), tok.special_id("<|user|>")]


def test_a_corrupt_sentencepiece_file_is_named(tmp_path):
    pytest.importorskip("sentencepiece")
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x05garbage\x00\x01")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a loadable sentencepiece model"):
        load_tokenizer(str(tmp_path))
