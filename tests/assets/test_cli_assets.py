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
    assert verified.exit_code == 0 and {r["status"] for r in json.loads(verified.stdout)["files"]} == {"ok"}
    pinned = json.loads(run("assets", "pin", *m, "--json", env=env).stdout)
    assert pinned["pinned"] == []  # the pull pinned everything already

    # corrupt a blob in the cache: verify names it and exits 5
    blob = tmp_path / "cache" / "blobs" / "sha256" / tree.files[BMODELS["int4"]][1]
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    bad = run("assets", "verify", *m, env=env)
    assert bad.exit_code == 5 and "corrupt" in bad.output
    assert "hint: `sophon-fleet assets pull` downloads the corrupt files again" in bad.stderr
    # ... and the next pull repairs it instead of calling it cached
    again = run(
        "assets", "pull", *m, "--variant", "int4", "--mirror", mirror.url, "--no-dfss", "--json", env=env
    )
    assert again.exit_code == 0, again.output
    statuses = {f["file"].rsplit("/", 1)[-1]: f["status"] for f in json.loads(again.stdout)["files"]}
    assert statuses["glm4-9b_int4_1dev.bmodel"] == "downloaded", statuses
    assert run("assets", "verify", *m, env=env).exit_code == 0
    assert (tmp_path / "cache" / "corrupt").is_dir()  # the bad copy is kept aside, not deleted


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
