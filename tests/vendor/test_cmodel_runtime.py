"""The unmodified chat runtime on real int4/int8 bmodels of the tiny GLM-4, run by the vendor's libbmrt on
the BM1684X cmodel (sophon.sail over ctypes, Python 3.8):

- greedy continuations equal torch (transformers' GlmForCausalLM) holding the same tpu-mlir-quantised weights,
  for several prompts, one of them up to a full KV cache;
- KV-cache decode equals recomputing the whole sequence with the prefill graphs;
- the seed's decode mask gives different (wrong) tokens on the real runtime too;
- penalty_sample_head (3 subnets, with CPU layers from libcpuop) runs and draws from its top 50;
- the numpy emulator, on the stand-in made from the same weights, agrees with the cmodel.

The cmodel takes ~1 s per decode step and ~3 s per prefill on two busy cores: the runs are batched into one
process per variant (module fixtures) and the tests assert on the results.
"""

from __future__ import annotations

import numpy as np
import pytest

from chat.model import GlmModel
from sim.tinyglm import build_standin

torch = pytest.importorskip(
    "torch", reason="the torch reference needs CPU torch (make test-vendor installs it)"
)
transformers = pytest.importorskip("transformers", reason="the torch reference needs transformers")

from tests.chat.test_reference import hf_config, hf_state_dict  # noqa: E402

pytestmark = [
    pytest.mark.vendor,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
# Measured on this machine: ≤ 0.46 (int4) and ≤ 0.9 (int8) against torch with the same quantised weights:
# the TPU computes in fp16 with fp32 accumulation, torch in fp32
TORCH_TOLERANCE = {"int4": 0.6, "int8": 1.0}
KV_TOLERANCE = 0.15  # block_cache vs block graph on fp16 hidden states and KV
# the emulator (fp32 math, fp16 at graph boundaries) vs the TPU's fp16 math: measured ≤ 0.1 for int4. For
# int8 it is ≤ 0.62 on this tiny model: not yet explained; a suspect is that tpu-mlir regroups W8F16's
# per-channel scales into groups of 128 inputs (A16MatMulToGroup), which the 64- and 192-wide inputs do not
# divide (the 9B's 4096 and 13696 do). Tokens agree either way.
EMULATOR_TOLERANCE = {"int4": 0.25, "int8": 1.0}
PROMPTS = {"short": (5, 5), "medium": (40, 4), "full": (123, 6)}  # length, steps: 123 + 6 - 1 = SEQLEN


def ids(length: int, seed: int, vocab: int = 600) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


# int4 runs every prompt and the extra modes; int8 (the same graphs with other weights) the short and the full
PROMPT_SETS = {"int4": ("short", "medium", "full"), "int8": ("short", "full")}


def runs_for(variant: str) -> list[dict]:
    runs = [
        {"id": name, "prompt": ids(PROMPTS[name][0], seed=PROMPTS[name][0]), "steps": PROMPTS[name][1]}
        for name in PROMPT_SETS[variant]
    ]
    for run in runs:
        run["mode"] = "recompute" if variant == "int4" and run["id"] == "short" else "greedy"
    if variant == "int4":
        runs.append({"id": "seed_mask", "prompt": ids(5, seed=5), "steps": 5, "mode": "seed_mask"})
        runs.append({"id": "sample", "prompt": ids(12, seed=12), "mode": "sample", "seed": 7})
    return runs


@pytest.fixture(scope="module")
def cmodel_results(compiled, run_cmodel, tmp_path_factory):
    """`cmodel_results(variant)`: (variant, the driver's results, the emulator's stand-in), run once."""
    done: dict[str, tuple] = {}

    def get(variant: str) -> tuple:
        if variant not in done:
            result = run_cmodel(compiled / f"glm4-9b_{variant}_1dev.bmodel", runs_for(variant))
            standin = build_standin(tmp_path_factory.mktemp(f"standin-{variant}"), seed=0, variant=variant)
            done[variant] = (variant, result, standin)
        return done[variant]

    return get


@pytest.fixture(params=["int4", "int8"])
def variant_run(request, cmodel_results):
    return cmodel_results(request.param)


@pytest.fixture
def int4_run(cmodel_results):
    return cmodel_results("int4")


def torch_logits(standin, sequence: list[int]) -> np.ndarray:
    from sophon import _bmodel

    header, arrays = _bmodel.read_bmodel(str(standin.bmodel))
    model = transformers.GlmForCausalLM(hf_config(header["config"])).eval()
    model.load_state_dict(hf_state_dict(header["config"], arrays), strict=True)
    with torch.no_grad():
        return model(torch.tensor([sequence])).logits[0].numpy()


def test_the_runtime_reads_the_real_graph_layout(variant_run):
    _, result, standin = variant_run
    summary = result["summary"]
    assert (summary["layers"], summary["seqlen"], summary["hidden"]) == (2, 128, 64)
    assert (summary["kv_heads"], summary["head_dim"], summary["vocab"]) == (
        2,
        16,
        standin.config["padded_vocab"],
    )


def test_greedy_continuations_equal_torch_with_the_same_quantised_weights(variant_run):
    """Teacher-forced on the cmodel's own tokens: at every step torch's argmax is the cmodel's token (or a
    near-tie within the tolerance) and the logits agree within the measured fp16 error."""
    variant, result, standin = variant_run
    tolerance, near_ties, filled = TORCH_TOLERANCE[variant], 0, 0
    for name in PROMPT_SETS[variant]:
        run = next(r for r in runs_for(variant) if r["id"] == name)
        tokens, logits = result["runs"][name]["tokens"], np.array(result["runs"][name]["logits"])
        reference = torch_logits(standin, run["prompt"] + tokens)[len(run["prompt"]) - 1 :]
        filled = max(filled, len(run["prompt"]) + len(tokens) - 1)
        for step, token in enumerate(tokens):
            np.testing.assert_allclose(
                logits[step], reference[step], atol=tolerance, err_msg=f"{name} {step}"
            )
            if int(np.argmax(reference[step])) != token:
                assert reference[step].max() - reference[step][token] < tolerance, f"{name} step {step}"
                near_ties += 1
    assert filled == 128  # one prompt ran until the KV cache was full
    assert near_ties <= 1


def test_kv_cache_decode_equals_recomputation_on_the_cmodel(int4_run):
    _, result, _ = int4_run
    run = result["runs"]["short"]
    for step, fresh in enumerate(run["fresh"]):
        assert fresh["token"] == run["tokens"][step], f"step {step}"
        np.testing.assert_allclose(
            run["logits"][step], fresh["logits"], atol=KV_TOLERANCE, err_msg=f"step {step}"
        )


def test_the_seeds_decode_mask_gives_different_tokens_on_the_cmodel(int4_run):
    _, result, _ = int4_run
    right, wrong = result["runs"]["short"], result["runs"]["seed_mask"]
    assert right["tokens"][0] == wrong["tokens"][0]  # same prompt, same prefill
    assert wrong["tokens"] != right["tokens"]
    assert np.abs(np.array(wrong["logits"][1]) - np.array(right["logits"][1])).max() > 1.0


def test_penalty_sample_head_runs_on_the_cmodel(int4_run):
    _, result, _ = int4_run
    sample = result["runs"]["sample"]
    probs, candidates = np.array(sample["probs"]), np.array(sample["candidates"])
    assert probs.shape == (50,) and abs(probs.sum() - 1.0) < 1e-3 and (np.diff(probs) <= 1e-6).all()
    assert sample["token"] in candidates[probs > 0]
    top50 = np.argsort(-np.array(sample["logits"]), kind="stable")[:50]
    assert set(candidates[:5]) <= set(top50[:10])  # the repetition penalty moves a few, top-k keeps the best


def test_the_emulator_agrees_with_the_cmodel(variant_run):
    """The emulator's stand-in holds the same model (same seed, quantised exactly like tpu-mlir): fed the
    cmodel's tokens, its logits agree within fp16 tolerance at every step, and its greedy choice is the
    cmodel's except at a near-tie (the cmodel's top two closer than the tolerance)."""
    variant, result, standin = variant_run
    emulator = GlmModel(str(standin.bmodel), sail=_emulator_sail())
    worst, near_ties = 0.0, 0
    for name in PROMPT_SETS[variant]:
        run = next(r for r in runs_for(variant) if r["id"] == name)
        cmodel_tokens, cmodel_logits = (
            result["runs"][name]["tokens"],
            np.array(result["runs"][name]["logits"]),
        )
        emulator.prefill(run["prompt"])
        for step, token in enumerate(cmodel_tokens):
            if step:
                emulator.decode(cmodel_tokens[step - 1])
            logits = emulator.logits()
            worst = max(worst, float(np.abs(logits - cmodel_logits[step]).max()))
            if emulator.greedy() != token:
                top_two = np.sort(cmodel_logits[step])[-2:]
                gap = top_two[1] - top_two[0]
                assert gap < EMULATOR_TOLERANCE[variant], f"{name} step {step}: not a near-tie"
                near_ties += 1
    assert worst < EMULATOR_TOLERANCE[variant]
    assert near_ties <= 1


def _emulator_sail():
    import sophon.sail as sail  # tests/chat/conftest.py puts sim/sail first: the numpy emulator

    assert sail.__version__.endswith("+sim")
    return sail
