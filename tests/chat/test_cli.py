"""`python3 -m chat` entry points, run as a box runs them: a subprocess with the emulator as sophon.sail."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.chat.conftest import ROOT, subprocess_env
from tests.py38 import need_py38, unavailable


def run_chat(*args, stdin="", python=sys.executable, env=None, timeout=60):
    return subprocess.run(
        [str(python), "-m", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def model_args(standin):
    return ["--bmodel", str(standin.bmodel), "--token", str(standin.token_dir)]


def test_selftest_prints_one_json_line(standin):
    result = run_chat("selftest", *model_args(standin))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["ok"] is True and report["tokens"] == 8 and report["model"] == standin.bmodel.name
    assert report["load_s"] >= 0 and report["ftl_s"] >= 0 and report["seqlen"] == standin.seqlen


def test_selftest_reports_a_broken_token_config_by_name(standin, tmp_path):
    result = run_chat("selftest", "--bmodel", str(standin.bmodel), "--token", str(tmp_path))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["error"] == "tokenizer"
    assert str(tmp_path / "tokenizer.model") in report["message"]


def test_a_token_config_larger_than_the_models_vocab_is_refused(standin, tmp_path):
    from sim.tinyglm import write_glm4_shaped_token_config

    token = write_glm4_shaped_token_config(tmp_path / "token_config")
    report = json.loads(run_chat("selftest", "--bmodel", str(standin.bmodel), "--token", str(token)).stdout)
    assert report["ok"] is False and "wrong token config for this bmodel" in report["message"]


def test_defaults_come_from_the_environment(standin):
    env = dict(
        subprocess_env(), SOPHON_CHAT_BMODEL=str(standin.bmodel), SOPHON_CHAT_TOKEN=str(standin.token_dir)
    )
    assert json.loads(run_chat("selftest", "--tokens", "2", env=env).stdout)["tokens"] == 2


def test_info_summarises_the_graphs(standin):
    result = run_chat("info", "--bmodel", str(standin.bmodel), "--json")
    assert json.loads(result.stdout) == {
        "model": standin.bmodel.name,
        "graphs": 9,
        "layers": 2,
        "seqlen": standin.seqlen,
        "hidden": 64,
        "kv_heads": 2,
        "head_dim": 16,
        "vocab": standin.config["padded_vocab"],
    }
    text = run_chat("info", "--bmodel", str(standin.bmodel)).stdout
    assert "block_cache_1" in text and "attention_mask[1, 1, 1, 129]" in text


def test_a_missing_bmodel_is_named(tmp_path, standin):
    result = run_chat("--bmodel", str(tmp_path / "none.bmodel"), "--token", str(standin.token_dir))
    assert result.returncode == 1 and "none.bmodel: bmodel not found" in result.stderr


def test_repl_is_seed_compatible_with_reset_and_exit(standin):
    result = run_chat(
        *model_args(standin), "--dev_id", "0", stdin="hello\n/reset\nbox 你好\nexit\nnever asked\n"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Question: ") == 4 and out.count("Answer: ") == 2
    assert out.count("FTL: ") == 2 and out.count("TPS: ") == 2 and "token/s" in out
    assert "(history cleared)" in out and out.rstrip().endswith("all done")


@pytest.fixture(scope="module")
def py38_venv(tmp_path_factory):
    """A Python 3.8 venv with only numpy and tiktoken from PyPI: what a box has."""
    py38 = need_py38()
    venv = tmp_path_factory.mktemp("py38") / "venv"
    subprocess.run([py38, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "numpy", "tiktoken"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        unavailable(f"could not install numpy/tiktoken for Python 3.8 from PyPI: {install.stderr[-300:]}")
    return python


def test_the_runtime_and_emulator_run_on_python_3_8(py38_venv, standin):
    version = subprocess.run([str(py38_venv), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("Python 3.8")
    report = json.loads(run_chat("selftest", *model_args(standin), python=py38_venv, timeout=120).stdout)
    assert report["ok"] is True and report["tokens"] == 8
    requests = [
        {"op": "chat", "id": 1, "prompt": "你好 😀", "max_new_tokens": 6},
        {"op": "chat", "id": 2, "prompt": "box", "max_new_tokens": 6, "sampling": {"seed": 1, "top_p": 0.9}},
    ]
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    served = run_chat("serve", "--stdio", *model_args(standin), stdin=stdin, python=py38_venv, timeout=120)
    events = [json.loads(line) for line in served.stdout.splitlines()]
    done = [e for e in events if e["event"] == "done"]
    assert [d["id"] for d in done] == [1, 2], served.stderr
    assert all(d["stop"] in ("eos", "length") and d["tokens"] <= 6 for d in done)
