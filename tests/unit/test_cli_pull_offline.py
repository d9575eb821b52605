"""`assets pull` when the vendor's servers cannot be reached: one clean line per file, the hint, no
traceback, a non-zero exit. The servers are 127.0.0.1 ports nothing listens on (real refused connections)."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from provision.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count):
    """Ports that were free a moment ago and that nothing listens on (each socket is closed again)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_pull_with_the_vendors_servers_unreachable_prints_one_line_per_file(tmp_path):
    dfss_a, dfss_b, http = free_ports(3)
    text = (ROOT / "models/glm4-9b.yaml").read_text()
    servers = (
        "  - {host: 106.38.208.114, port: 32022, user: open, password: open}\n"
        "  - {host: 103.68.183.114, port: 32022, user: open, password: open}\n"
    )
    assert servers in text
    text = text.replace(
        servers,
        f"  - {{host: 127.0.0.1, port: {dfss_a}, user: open, password: open}}\n"
        f"  - {{host: 127.0.0.1, port: {dfss_b}, user: open, password: open}}\n",
    )
    wheel = "    dfss: sophon-demo/ChatGLM4/sail/soc/sophon_arm-3.8.0-py3-none-any.whl\n"
    assert wheel in text
    text = text.replace(wheel, f"{wheel}    sources:\n      - url: http://127.0.0.1:{http}/sophon_arm.whl\n")
    models = tmp_path / "models"
    models.mkdir()
    (models / "glm4-9b.yaml").write_text(text)
    env = {"SOPHON_FLEET_MODELS": str(models), "SOPHON_FLEET_MODEL": "glm4-9b"}
    result = CliRunner().invoke(cli, ["assets", "pull", "--variant", "int4"], env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    files = ["glm4-9b_int4_1dev.bmodel", "token_config.zip", "sophon_arm-3.8.0-py3-none-any.whl"]
    assert len(lines) == len(files) + 1, result.stderr  # one line per file, one hint
    for line, name in zip(lines, files, strict=False):
        assert line.startswith(f"error: {name}: could not download ("), result.stderr
        assert f"127.0.0.1:{dfss_a}" in line and f"127.0.0.1:{dfss_b}" in line, line
        assert "Connection refused" in line and line.count("sftp://") == 2, line  # each source named once
    assert f"http://127.0.0.1:{http}/sophon_arm.whl: cannot connect" in lines[2]
    assert "HTTPConnectionPool" not in result.stderr
    assert lines[-1] == "hint: check the network/mirrors"
    assert not list((models).glob("*.lock.yaml"))  # nothing was pinned
