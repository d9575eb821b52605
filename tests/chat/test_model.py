"""GlmModel reads everything from the engine and refuses bmodels that are not shaped like ChatGLM4's."""

import pytest
from sophon import _bmodel, _glm

from chat.errors import ModelError
from chat.model import GlmModel


def test_shapes_come_from_the_engine(model, standin):
    assert (model.num_layers, model.seqlen, model.hidden) == (2, standin.seqlen, 64)
    assert (model.kv_heads, model.head_dim, model.vocab) == (2, 16, standin.config["padded_vocab"])


def test_more_layers_and_another_seqlen_are_picked_up(tmp_path):
    from sim.tinyglm import build_standin

    other = build_standin(tmp_path, seed=5, layers=3, seqlen=64)
    model = GlmModel(str(other.bmodel))
    assert (model.num_layers, model.seqlen, len(model.graph_names)) == (3, 64, 11)
    model.prefill([1, 2, 3])
    model.decode(model.greedy())
    assert model.filled == 4


def test_a_bmodel_without_the_chatglm4_graphs_is_refused(standin, tmp_path):
    header, arrays = _bmodel.read_bmodel(str(standin.bmodel))
    header["graphs"] = [g for g in _glm.graph_specs(header["config"]) if g["name"] != "block_cache_1"]
    broken = tmp_path / "broken.bmodel"
    _bmodel.write_bmodel(str(broken), header, arrays)
    with pytest.raises(
        ModelError, match=r"broken\.bmodel: not a ChatGLM4 bmodel .*missing \['block_cache_1'\]"
    ):
        GlmModel(str(broken))


def test_a_file_that_is_no_bmodel_is_named(tmp_path):
    junk = tmp_path / "junk.bmodel"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"junk\.bmodel: cannot load bmodel on device 0"):
        GlmModel(str(junk))


def test_prompts_longer_than_seqlen_are_refused(model, standin):
    with pytest.raises(ModelError, match="does not fit SEQLEN"):
        model.prefill([1] * (standin.seqlen + 1))
