"""The `assets` commands end to end against the simulated HTTP mirror (CliRunner, no SSH)."""

import json

from click.testing import CliRunner

from provision.cli.main import cli
from sim.mirror import BMODELS, Faults
from tests.assets.conftest import write_manifest


def run(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env)
    return result


def test_pull_ls_verify_pin_json(tmp_path, tree, mirror):
    manifest, _lock = write_manifest(tmp_path, tree)
    env = {"SOPHON_FLEET_CACHE": str(tmp_path / "cache"), "SOPHON_FLEET_HOME": str(tmp_path / "home")}
    m = ["-m", manifest.source]
    result = run(
        "assets", "pull", *m, "--variant", "all", "--mirror", mirror.url, "--no-dfss", "--json", env=env
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {f["status"] for f in doc["files"]} == {"downloaded"} and len(doc["files"]) == 4

    ls = json.loads(run("assets", "ls", "--json", env=env).stdout)
    assert len(ls["blobs"]) == 4 and ls["partial"] == []
    assert any("glm4-9b-sim/glm4-9b_int8_1dev.bmodel" in b["names"] for b in ls["blobs"])

    verified = run("assets", "verify", *m, "--json", env=env)
    assert verified.exit_code == 0 and {r["status"] for r in json.loads(verified.stdout)} == {"ok"}
    pinned = json.loads(run("assets", "pin", *m, "--json", env=env).stdout)
    assert pinned["pinned"] == []  # the pull pinned everything already

    # corrupt a blob in the cache: verify names it and exits 5
    blob = tmp_path / "cache" / "blobs" / "sha256" / tree.files[BMODELS["int4"]][1]
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    bad = run("assets", "verify", *m, env=env)
    assert bad.exit_code == 5 and "corrupt" in bad.output


def test_pull_reports_integrity_failure_with_exit_5(tmp_path, tree, mirror):
    manifest, _lock = write_manifest(tmp_path, tree, pin=True)
    mirror.faults = Faults(flip_at=1, times=0, path=BMODELS["int8"])
    env = {"SOPHON_FLEET_CACHE": str(tmp_path / "cache"), "SOPHON_FLEET_HOME": str(tmp_path / "home")}
    m = ["-m", manifest.source]
    result = run("assets", "pull", *m, "--variant", "int8", "--mirror", mirror.url, "--no-dfss", env=env)
    assert result.exit_code == 5, result.output
    assert "no source delivered the pinned content" in result.output


def test_unknown_variant_is_a_usage_error(tmp_path, tree):
    manifest, _lock = write_manifest(tmp_path, tree)
    result = run("assets", "pull", "-m", manifest.source, "--variant", "fp16")
    assert result.exit_code == 2 and "known: int4, int8" in result.output
