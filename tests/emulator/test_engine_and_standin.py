"""The emulated Engine loads stand-in bmodels shaped like the real ChatGLM4 bmodel and checks process()."""

import hashlib
import zipfile

import numpy as np
import pytest
import sophon.sail as sail
from sophon import _glm

from sim.tinyglm import GLM4_SPECIAL_TOKENS, build_standin, pad_bmodel

F16, F32, I32 = sail.Dtype.BM_FLOAT16, sail.Dtype.BM_FLOAT32, sail.Dtype.BM_INT32


def _engine(standin):
    return sail.Engine(str(standin.bmodel), 0, sail.IOMode.DEVIO)


def _io(engine, graph):
    def describe(names, shape, dtype):
        return [(n, shape(graph, n), dtype(graph, n)) for n in names]

    return (
        describe(engine.get_input_names(graph), engine.get_input_shape, engine.get_input_dtype),
        describe(engine.get_output_names(graph), engine.get_output_shape, engine.get_output_dtype),
    )


def test_graphs_have_the_real_names_shapes_and_dtypes_scaled(standin):
    engine = _engine(standin)
    seq, hidden, vocab = standin.seqlen, standin.config["hidden"], standin.config["padded_vocab"]
    kv = [1, standin.config["kv_heads"], seq, standin.config["head_dim"]]
    names = engine.get_graph_names()
    assert (len(names) - 5) // 2 == standin.config["layers"] == 2
    assert set(names) == {"embedding", "embedding_cache", "lm_head", "greedy_head", "penalty_sample_head"} | {
        f"block{c}_{i}" for i in range(2) for c in ("", "_cache")
    }
    assert _io(engine, "block_1") == (
        [
            ("input_states", [1, seq, hidden], F16),
            ("position_ids", [1, seq], I32),
            ("attention_mask", [1, 1, seq, seq], F16),
        ],
        [("hidden_states", [1, seq, hidden], F16), ("past_k", kv, F16), ("past_v", kv, F16)],
    )
    cache_in, cache_out = _io(engine, "block_cache_0")
    assert [(n, s) for n, s, _ in cache_in] == [
        ("input_states", [1, 1, hidden]),
        ("position_ids", [1, 1]),
        ("attention_mask", [1, 1, 1, seq + 1]),
        ("history_k", kv),
        ("history_v", kv),
    ]
    assert cache_out[1] == ("past_k", [1, 2, 1, 16], F16)
    assert _io(engine, "embedding") == (
        [("input_ids", [1, seq], I32)],
        [("hidden_states", [1, seq, hidden], F16)],
    )
    assert _io(engine, "lm_head") == ([("hidden_states", [1, hidden], F16)], [("m_logits", [1, vocab], F32)])
    assert _io(engine, "greedy_head")[1] == [("token", [1, 1], I32)]
    assert _io(engine, "penalty_sample_head")[1] == [("probs", [1, 50], F32), ("token", [1, 50], I32)]


def test_process_checks_names_shapes_and_dtypes(standin):
    engine = _engine(standin)
    handle = sail.Handle(0)
    logits = sail.Tensor(handle, [1, standin.config["padded_vocab"]], F32, False, True)
    token = sail.Tensor(handle, [1, 1], I32, False, True)
    with pytest.raises(RuntimeError, match="inputs must be"):
        engine.process("greedy_head", {"logits": logits}, {"token": token})
    with pytest.raises(RuntimeError, match="graph wants"):
        engine.process("greedy_head", {"m_logits": token}, {"token": token})
    with pytest.raises(RuntimeError, match="no graph"):
        engine.process("block_9", {}, {})
    values = np.zeros(standin.config["padded_vocab"], dtype=np.float32)
    values[123] = 5.0
    logits.update_data(values)
    engine.process("greedy_head", {"m_logits": logits}, {"token": token})
    assert token.asnumpy().tolist() == [[123]]


def test_engine_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.bmodel"
    with pytest.raises(RuntimeError, match="missing.bmodel"):
        sail.Engine(str(missing), 0, sail.IOMode.DEVIO)
    junk = tmp_path / "junk.bmodel"
    junk.write_bytes(b"\xff\x55\xaa\xee not ours")
    with pytest.raises(RuntimeError, match="junk.bmodel.*bad magic"):
        sail.Engine(str(junk), 0, sail.IOMode.DEVIO)


def test_truncated_bmodel_is_refused(standin, tmp_path):
    cut = tmp_path / "cut.bmodel"
    cut.write_bytes(standin.bmodel.read_bytes()[:-100])
    with pytest.raises(RuntimeError, match="cut.bmodel: truncated payload"):
        sail.Engine(str(cut), 0, sail.IOMode.DEVIO)


def test_same_seed_same_bytes_and_variants_differ_by_quantisation(tmp_path, standin, standin_int8):
    again = build_standin(tmp_path / "again", seed=0, variant="int4")
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digest(again.bmodel) == digest(standin.bmodel)
    assert digest(again.token_zip) == digest(standin.token_zip)
    assert digest(standin_int8.bmodel) != digest(standin.bmodel)
    assert (standin_int8.token_dir / "tokenizer.model").read_bytes() == (
        standin.token_dir / "tokenizer.model"
    ).read_bytes()
    other_seed = build_standin(tmp_path / "seed1", seed=1, variant="int4")
    assert digest(other_seed.bmodel) != digest(standin.bmodel)


def test_int4_weights_have_at_most_16_levels_per_group_and_int8_256(standin, standin_int8):
    from sophon import _bmodel

    _, int4 = _bmodel.read_bmodel(str(standin.bmodel))
    _, int8 = _bmodel.read_bmodel(str(standin_int8.bmodel))
    row4, row8 = int4["layers.0.qkv.weight"][0, :64], int8["layers.0.qkv.weight"][0]
    assert len(np.unique(row4)) <= 16
    assert 16 < len(np.unique(row8)) <= 256
    np.testing.assert_allclose(
        row4.astype(np.float32), int8["layers.0.qkv.weight"][0, :64].astype(np.float32), atol=0.2
    )


def test_padded_bmodel_has_the_size_and_still_loads_the_same(standin, tmp_path):
    padded = build_standin(tmp_path, seed=0, variant="int4", pad_to=3_000_000)
    assert padded.bmodel.stat().st_size == 3_000_000
    assert _engine(padded).get_graph_names() == _engine(standin).get_graph_names()
    pad_bmodel(padded.bmodel, 4_000_000)
    assert padded.bmodel.stat().st_size == 4_000_000
    _engine(padded)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_bmodel(padded.bmodel, 100)
    with pytest.raises(ValueError, match="cannot pad"):
        build_standin(tmp_path / "small", pad_to=1000)


def test_token_config_zip_unpacks_to_token_config(standin):
    with zipfile.ZipFile(standin.token_zip) as archive:
        assert sorted(archive.namelist()) == [
            "token_config/tokenizer.model",
            "token_config/tokenizer_config.json",
        ]
        assert (
            archive.read("token_config/tokenizer.model")
            == (standin.token_dir / "tokenizer.model").read_bytes()
        )
    first = (standin.token_dir / "tokenizer.model").read_text().splitlines()[:1]
    assert first == ["IQ== 0"]  # "!" has rank 0, as in GLM-4's file
    assert standin.config["vocab"] == 600 + len(GLM4_SPECIAL_TOKENS)


def test_glm_rotary_depends_only_on_the_position_difference():
    """RoPE's defining property, on GLM's layout (first half of the head, interleaved pairs)."""
    rng = np.random.default_rng(0)
    q, k = (
        rng.standard_normal((1, 1, 16)).astype(np.float32),
        rng.standard_normal((1, 1, 16)).astype(np.float32),
    )

    def score(pos_q, pos_k):
        cq, sq = _glm.rotary_tables(np.array([pos_q]), 16, 1.0)
        ck, sk = _glm.rotary_tables(np.array([pos_k]), 16, 1.0)
        return float((_glm.apply_rotary(q, cq, sq) * _glm.apply_rotary(k, ck, sk)).sum())

    assert score(7, 3) == pytest.approx(score(24, 20), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)
    cos, sin = _glm.rotary_tables(np.array([5]), 16, 1.0)
    rotated = _glm.apply_rotary(q, cos, sin)
    np.testing.assert_array_equal(rotated[..., 8:], q[..., 8:])  # second half untouched
    np.testing.assert_allclose(rotated[..., 0], q[..., 0] * np.cos(5.0) - q[..., 1] * np.sin(5.0), rtol=1e-5)


def test_penalty_sample_head_follows_the_export(standin):
    engine, handle = _engine(standin), sail.Handle(0)
    vocab, seq = standin.config["padded_vocab"], standin.seqlen
    tensors = {
        "m_logits": sail.Tensor(handle, [1, vocab], F32, False, True),
        "input_ids": sail.Tensor(handle, [1, seq], I32, False, True),
        "top_p": sail.Tensor(handle, [1], F32, False, True),
        "temperature": sail.Tensor(handle, [1], F32, False, True),
        "penalty": sail.Tensor(handle, [1], F32, False, True),
    }
    out = {
        "probs": sail.Tensor(handle, [1, 50], F32, False, True),
        "token": sail.Tensor(handle, [1, 50], I32, False, True),
    }
    logits = np.linspace(0, 5, vocab).astype(np.float32)
    tensors["m_logits"].update_data(logits)
    tensors["input_ids"].update_data(np.full(seq, vocab - 1, dtype=np.int32))  # the best token was seen
    for name, value in (("top_p", 0.9), ("temperature", 1.0), ("penalty", 100.0)):
        tensors[name].update_data(np.array([value], dtype=np.float32))
    engine.process("penalty_sample_head", tensors, out)
    tokens, probs = out["token"].asnumpy()[0], out["probs"].asnumpy()[0]
    assert tokens[0] == vocab - 2 and vocab - 1 not in tokens[:5]  # penalised out of the top
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert (probs[:5] > 0).all() and probs[-1] == pytest.approx(0.0, abs=1e-6)  # top-p cut the tail


def test_mirror_assets_sit_at_the_dfss_paths_and_load(tmp_path):
    from sim.tinyglm import MIRROR_PATHS, build_mirror_assets

    files = build_mirror_assets(tmp_path, seed=0, pad_to={"int8": 2_000_000})
    assert {key: path.relative_to(tmp_path).as_posix() for key, path in files.items()} == MIRROR_PATHS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sophon-demo"]  # nothing else left in the mirror
    assert files["int8"].stat().st_size == 2_000_000
    assert _engine(type("S", (), {"bmodel": files["int4"]})).get_graph_names()[0] == "block_0"
    with zipfile.ZipFile(files["token_config"]) as archive:
        assert "token_config/tokenizer.model" in archive.namelist()
