"""The service's unit and plan, and the gateway's haproxy.cfg (checked by the real `haproxy -c`), no boxes."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from provision.errors import ConfigError
from provision.inventory.hosts import Host
from provision.manifest import load_manifest
from provision.runtime import gateway
from provision.runtime import serve as serve_core
from tests.fakes import Reply, ScriptedTransport

HAPROXY = pytest.mark.skipif(not os.access(gateway.HAPROXY, os.X_OK), reason="haproxy is not installed")


def test_the_unit_runs_the_current_runtime_as_the_box_user_and_restarts_on_failure():
    unit = serve_core.render_unit(load_manifest("glm4-9b"), "int4", "linaro")
    assert "User=linaro\nGroup=linaro\n" in unit and "Restart=on-failure\n" in unit
    assert (
        "ExecStart=/data/sophon-fleet/runtime/current/venv/bin/python -m chat serve --http 0.0.0.0:8000"
        in unit
    )
    assert "--api-key-file /data/sophon-fleet/serve/api-key" in unit and "WantedBy=multi-user.target" in unit
    assert "--model-name glm4-9b --variant int4" in unit


def unit_state_script(enabled: str, active: str) -> Reply:
    return Reply(
        r"systemctl is-enabled",
        f"installed=yes\nenabled={enabled}\nActiveState={active}\nSubState=running\nMainPID=42\nNRestarts=0\n",
    )


def test_plan_up_changes_nothing_on_a_box_already_serving_as_planned():
    host = Host("se7-1", "10.0.0.1")
    unit = serve_core.render_unit(load_manifest("glm4-9b"), "int4", "linaro")
    box = ScriptedTransport(
        [
            Reply(r"^cat /etc/systemd", unit),
            Reply(r"^cat /data", "sk-box-1\n"),
            unit_state_script("enabled", "active"),
        ],
        host=host,
    )
    assert serve_core.plan_up(box, unit, "sk-box-1") == []
    stale = ScriptedTransport(
        [
            Reply(r"^cat /etc/systemd", "old"),
            Reply(r"^cat /data", "sk-old"),
            unit_state_script("disabled", "failed"),
        ],
        host=host,
    )
    assert serve_core.plan_up(stale, unit, "sk-box-1") == ["unit", "key", "enable", "start"]


def test_keys_are_made_once_and_private(tmp_path):
    path = serve_core.key_path(tmp_path, "se7-1")
    key = serve_core.ensure_key(path)
    assert key.startswith("sk-box-") and len(key) > 40 and serve_core.ensure_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def hosts_with_keys(home, names):
    hosts = [Host(name, f"10.213.7.{10 + i}") for i, name in enumerate(names, start=1)]
    for host in hosts[:-1]:  # the last one was never `serve up`'d
        serve_core.ensure_key(serve_core.key_path(home, host.name))
    return hosts


@HAPROXY
def test_gateway_config_one_server_per_serving_box_checked_by_haproxy(tmp_path):
    paths = gateway.gateway_paths(tmp_path)
    config = gateway.write_config(
        paths, hosts_with_keys(tmp_path, ["se7-1", "se7-2", "se7-3"]), tmp_path, None
    )
    assert [b.name for b in config.backends] == ["se7-1", "se7-2"] and config.skipped == ("se7-3",)
    assert config.listen == gateway.DEFAULT_LISTEN
    text = paths.config.read_text()
    assert "balance leastconn" in text and "option httpchk GET /health" in text
    assert text.count(" maxconn 1 check addr ") == 2 and "check addr 10.213.7.11 port 8000" in text
    box_key = serve_core.key_path(tmp_path, "se7-1").read_text().strip()
    assert f'http-request set-header Authorization "Bearer {box_key}"' in text
    assert stat.S_IMODE(paths.config.stat().st_mode) == 0o600
    client_key = gateway.ensure_client_key(paths)
    assert paths.auth_list.read_text() == hashlib.sha256(f"Bearer {client_key}".encode()).hexdigest() + "\n"
    assert "req.hdr(authorization),digest(sha256),hex,lower -m str -f" in text and client_key not in text
    again = gateway.write_config(
        paths, hosts_with_keys(tmp_path, ["se7-1", "se7-2"]), tmp_path, "0.0.0.0:9000"
    )
    assert again.listen == "0.0.0.0:9000" and "bind 0.0.0.0:9000" in paths.config.read_text()
    assert (
        gateway.write_config(paths, [Host("se7-1", "10.213.7.11")], tmp_path, None).listen == "0.0.0.0:9000"
    )


def test_gateway_config_refuses_bad_input_and_changes_nothing(tmp_path):
    paths = gateway.gateway_paths(tmp_path)
    with pytest.raises(ConfigError, match="ADDR:PORT"):
        gateway.write_config(paths, hosts_with_keys(tmp_path, ["se7-1", "x"]), tmp_path, "localhost")
    with pytest.raises(ConfigError, match="has an API key") as caught:
        gateway.write_config(paths, [Host("se7-9", "10.213.7.99")], tmp_path, None)
    assert "serve up" in caught.value.hint
    assert not paths.config.exists()
