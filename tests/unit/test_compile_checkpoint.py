"""`model compile`'s input checks, before anything is installed or compiled: a Hugging Face GLM-4 directory
with a missing or wrong-shaped weight, a wrong config or no tokenizer is refused with the file and the key
named (exit 2), and nothing is written. The safetensors reader round-trips f32/f16/bf16."""

from __future__ import annotations

import json

import numpy as np
import pytest

from provision.compile.checkpoint import expected_shapes, hf_name, load_checkpoint
from provision.compile.safetensors import SafetensorsFile, write_safetensors
from provision.errors import ConfigError
from sim.tinyglm import write_hf_checkpoint
from tests.sim.flows import invoke


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_hf_checkpoint(tmp_path_factory.mktemp("glm") / "tiny-glm4")


def rewrite_weights(root, change):
    """Rewrite model.safetensors with `change(tensors)` applied (a dict of hf name -> array)."""
    file = SafetensorsFile(root / "model.safetensors")
    tensors = {name: np.array(file.read(name)) for name in file.names()}
    change(tensors)
    write_safetensors(root / "model.safetensors", tensors)


def copy_of(checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    for path in checkpoint.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_the_tiny_checkpoint_is_a_valid_glm4_directory(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    assert ckpt.config["layers"] == 2 and ckpt.config["padded_vocab"] == 640
    for short, shape in expected_shapes(ckpt.config).items():
        assert ckpt.weight(short).shape == shape


def test_safetensors_round_trip_f32_f16_bf16(tmp_path):
    values = np.array([[1.0, -2.5, 3.140625], [1e-3, 65504.0, -0.0]], dtype=np.float32)
    write_safetensors(tmp_path / "a.safetensors", {"f32": values, "f16": values.astype(np.float16)})
    write_safetensors(tmp_path / "b.safetensors", {"bf16": values}, bf16=True)
    a, b = SafetensorsFile(tmp_path / "a.safetensors"), SafetensorsFile(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(a.read("f32"), values)
    np.testing.assert_array_equal(a.read("f16"), values.astype(np.float16))
    assert b.entries["bf16"]["dtype"] == "BF16"
    np.testing.assert_allclose(b.read("bf16"), values, rtol=2**-8)


def test_a_wrong_shaped_weight_is_named_with_its_file(checkpoint, tmp_path):
    root = copy_of(checkpoint, tmp_path)
    name = hf_name("layers.1.dense.weight")
    rewrite_weights(root, lambda t: t.__setitem__(name, np.zeros((64, 32), dtype=np.float32)))
    with pytest.raises(ConfigError) as error:
        load_checkpoint(root)
    assert name in str(error.value) and "model.safetensors" in str(error.value)
    assert "[64, 32]" in str(error.value) and "[64, 64]" in str(error.value)


def test_a_missing_weight_is_named(checkpoint, tmp_path):
    root = copy_of(checkpoint, tmp_path)
    name = hf_name("final_norm")
    rewrite_weights(root, lambda t: t.pop(name))
    with pytest.raises(ConfigError, match="weight is missing") as error:
        load_checkpoint(root)
    assert name in str(error.value)


def test_a_truncated_weight_file_is_refused(checkpoint, tmp_path):
    root = copy_of(checkpoint, tmp_path)
    data = (root / "model.safetensors").read_bytes()
    (root / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(ConfigError, match="truncated"):
        ckpt = load_checkpoint(root)
        ckpt.weight("output_layer.weight")


def test_a_config_of_another_model_type_is_refused(checkpoint, tmp_path):
    root = copy_of(checkpoint, tmp_path)
    config = json.loads((root / "config.json").read_text())
    config["model_type"] = "llama"
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model_type") as error:
        load_checkpoint(root)
    assert "config.json" in str(error.value)


def test_the_cli_refuses_a_bad_weight_with_exit_2_and_writes_nothing(checkpoint, tmp_path, isolated_settings):
    root = copy_of(checkpoint, tmp_path)
    name = hf_name("layers.0.qkv.bias")
    rewrite_weights(root, lambda t: t.__setitem__(name, np.zeros(7, dtype=np.float32)))
    out_dir = tmp_path / "out"
    code, stdout, stderr = invoke(
        "model", "compile", str(root), "--name", "x", "--seqlen", "64", "--out", str(out_dir)
    )
    assert code == 2, stdout + stderr
    assert name in stderr and "[7]" in stderr
    assert not out_dir.exists()
    assert not (isolated_settings / "cache" / "compiler").exists()  # nothing installed for a bad input


def test_a_build_stage_starts_over_when_its_inputs_change(checkpoint, tmp_path):
    """The build dir resumes only what was made from the same inputs: other weights (a fine-tune), another
    SEQLEN or variant empty the stage (no tpu-mlir needed to check this)."""
    from provision.compile.pipeline import _fingerprint, _stage

    root = copy_of(checkpoint, tmp_path)
    ckpt = load_checkpoint(root)
    stage = _stage(tmp_path / "build" / "int4", _fingerprint(ckpt, 64, "int4"))
    (stage / "block_0.bmodel").write_bytes(b"done")
    assert (_stage(stage, _fingerprint(ckpt, 64, "int4")) / "block_0.bmodel").exists()  # same inputs: kept
    for changed in (_fingerprint(ckpt, 128, "int4"), _fingerprint(ckpt, 64, "int8")):
        (stage / "block_0.bmodel").write_bytes(b"done")
        assert not (_stage(stage, changed) / "block_0.bmodel").exists()
        _stage(stage, _fingerprint(ckpt, 64, "int4"))
    (stage / "block_0.bmodel").write_bytes(b"done")
    write_hf_checkpoint(root, seed=9)  # fine-tuned weights, same layout
    assert not (_stage(stage, _fingerprint(load_checkpoint(root), 64, "int4")) / "block_0.bmodel").exists()
