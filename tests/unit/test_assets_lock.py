"""Pins file, manifest extensions (mirrors, tokenizer, second manifest), cache path safety."""

import pytest

from provision.assets.cache import Cache
from provision.assets.pins import default_pins_path, load_pins
from provision.errors import ConfigError, IntegrityError
from provision.manifest import MODELS_DIR, load_manifest, parse_manifest
from provision.settings import load_settings
from provision.yamlfile import parse_yaml

SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "glm4-9b.yaml"
    path.write_text((MODELS_DIR / "glm4-9b.yaml").read_text())
    return load_manifest(path)


def write_lock(manifest, body):
    path = default_pins_path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return load_pins(manifest)


def test_lock_round_trip_and_expected(manifest):
    lock = load_pins(manifest)
    assert lock.entries == {} and lock.path == default_pins_path(manifest)
    assert lock.path.is_relative_to(load_settings().home / "pins")  # never beside the manifest
    bmodel = manifest.files["bmodel-int4"]
    assert lock.record(bmodel, 10, SHA_A) is True
    assert lock.record(bmodel, 10, SHA_A) is False
    lock.save()
    again = load_pins(manifest)
    assert again.expected(bmodel).sha256 == SHA_A and again.expected(bmodel).size == 10
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        again.check(bmodel, 10, SHA_B)
    with pytest.raises(IntegrityError, match="size 11"):
        again.record(bmodel, 11, SHA_A)


def test_lock_errors_name_file_line_and_key(manifest):
    with pytest.raises(ConfigError) as info:
        write_lock(
            manifest, f"model: glm4-9b\nfiles:\n  bmodel-int4:\n    size: 10\n    sha256: {SHA_A[:10]}\n"
        )
    assert str(info.value).endswith(
        f"{default_pins_path(manifest).name}:5: files.bmodel-int4.sha256: must be 64 lowercase hex digits"
    )
    with pytest.raises(ConfigError, match=r":3: files.bmodel-int9: unknown file id"):
        write_lock(manifest, f"model: glm4-9b\nfiles:\n  bmodel-int9: {{size: 1, sha256: {SHA_A}}}\n")
    with pytest.raises(ConfigError, match=r":1: model: is 'other', expected 'glm4-9b'"):
        write_lock(manifest, "model: other\nfiles: {}\n")


def test_manifest_pin_that_disagrees_with_the_lock_is_refused(manifest):
    lock = write_lock(
        manifest,
        f"model: glm4-9b\nfiles:\n  token-config: {{path: token_config.zip, size: 5, sha256: {SHA_A}}}\n",
    )
    import dataclasses

    from provision.manifest import Pinned

    pinned = dataclasses.replace(manifest.files["token-config"], pinned=Pinned(size=5, sha256=SHA_B))
    with pytest.raises(ConfigError, match="the manifest pins sha256"):
        lock.expected(pinned)


def test_second_manifest_is_general():
    glm3 = load_manifest("chatglm3-6b")
    assert glm3.tokenizer == "sentencepiece" and set(glm3.variants) == {"fp16", "int8", "int4"}
    assert glm3.variant("fp16").min_heap_mib == 12800
    assert glm3.variant("int4").bmodel.dfss == "sophon-demo/ChatGLM3/models/BM1684X/chatglm3-6b_int4.bmodel"
    assert load_manifest("glm4-9b").tokenizer == "tiktoken"


def test_mirrors_must_be_urls():
    text = (MODELS_DIR / "glm4-9b.yaml").read_text().replace("mirrors: []", "mirrors: [ftp://x]")
    with pytest.raises(ConfigError, match=r"mirrors\[0\]: must be a URL"):
        parse_manifest(parse_yaml(text, "m.yaml"))


def test_cache_refuses_paths_that_escape(tmp_path):
    cache = Cache(tmp_path / "c")
    with pytest.raises(ConfigError, match="escapes the cache"):
        cache.link_path("glm4-9b", "../../etc/passwd")
