import pytest

from provision.compile import footprint
from provision.errors import ConfigError
from provision.manifest import MODELS_DIR, load_manifest, parse_manifest
from provision.memory.layout import Layout
from provision.yamlfile import parse_yaml

GOOD = (MODELS_DIR / "glm4-9b.yaml").read_text()


def test_glm4_manifest_thresholds_are_the_models_derived_footprint():
    """min_heap_mib is GLM-4-9B's npu + vpp need as libbmrt counts it (provision/compile/footprint.py), not
    the sample README's 7168/4608 (tests/emulator/test_heap.py loads it at these and not at the README's)."""
    manifest = load_manifest("glm4-9b")
    config = dict(footprint.GLM4_9B, padded_vocab=footprint.GLM4_9B_VOCAB)
    for variant, mib in (("int8", 10045), ("int4", 5860)):
        assert manifest.variant(variant).min_heap_mib == footprint.min_heap_mib(config, 512, variant) == mib
    assert manifest.recommended_layout == Layout(7615, 3072, 3072)
    assert manifest.variant("int4").bmodel.path == "glm4-9b_int4_1dev.bmodel"
    tokenizer = manifest.files["token-config"].contains["token_config/tokenizer.model"]
    assert tokenizer.size == 2623634


def parse(text):
    return parse_manifest(parse_yaml(text, "m.yaml"))


def error_of(text):
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def test_unknown_key_names_file_line_and_key():
    text = GOOD.replace("    files: [bmodel-int4,", "    colour: red\n    files: [bmodel-int4,")
    line = text.splitlines().index("    colour: red") + 1
    assert error_of(text) == (
        f"m.yaml:{line}: variants.int4.colour: unknown key (expected one of: files, min_heap_mib)"
    )


def test_wrong_type_is_named():
    text = GOOD.replace("min_heap_mib: 10045", "min_heap_mib: lots")
    assert "variants.int8.min_heap_mib: must be a number, not text" in error_of(text)


def test_path_escaping_the_cache_is_refused():
    text = GOOD.replace("path: token_config.zip", "path: ../../etc/passwd")
    assert "files.token-config.path: '../../etc/passwd' must be a relative path inside the cache" in error_of(
        text
    )


def test_unknown_file_reference_is_refused():
    text = GOOD.replace("files: [bmodel-int8, token-config", "files: [bmodel-int9, token-config")
    assert "variants.int8.files[0]: unknown file 'bmodel-int9'" in error_of(text)


def test_bad_sha256_is_refused():
    text = GOOD.replace("sha256: 5a49", "sha256: XX49")
    assert "sha256: must be 64 lowercase hex digits" in error_of(text)


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ConfigError, match="known: int4, int8"):
        load_manifest("glm4-9b").variant("fp16")
