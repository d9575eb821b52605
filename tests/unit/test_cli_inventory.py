import json

from click.testing import CliRunner

from provision.cli.main import cli

INV = """\
defaults: {user: linaro, become_password_env: SE7_SUDO}
groups:
  lab: {hosts: [b1]}
hosts:
  b1: {address: 10.0.0.1}
  b2: {address: 10.0.0.2, password_file: /etc/fleet/pw}
"""


def test_inventory_json_masks_secrets(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV)
    result = CliRunner().invoke(cli, ["inventory", "-i", str(path), "-H", "root@10.0.0.9:2222", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "sophon-fleet/inventory/v1" and doc["groups"] == {"lab": ["b1"]}
    names = [h["name"] for h in doc["hosts"]]
    assert names == ["b1", "b2", "10.0.0.9"]
    assert doc["hosts"][1]["password"] == "file:/etc/fleet/pw"
    assert doc["hosts"][0]["become_password"] == "env:SE7_SUDO"
    assert doc["hosts"][2]["port"] == 2222 and doc["hosts"][2]["user"] == "root"


def test_inventory_table_and_limit(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text(INV)
    result = CliRunner().invoke(cli, ["inventory", "-i", str(path), "--limit", "lab"])
    assert result.exit_code == 0 and "b1" in result.output and "b2" not in result.output


def test_no_hosts_and_bad_files_exit_2_before_connecting(tmp_path):
    result = CliRunner().invoke(cli, ["preflight"])
    assert result.exit_code == 2 and "no hosts given" in result.output
    bad = tmp_path / "hosts.ini"
    bad.write_text("[se7]\nse7-1 ansible_port=twenty\n")
    result = CliRunner().invoke(cli, ["doctor", "se7-1", "-i", str(bad)])
    assert result.exit_code == 2 and f"{bad}:2: port: must be a port number" in result.output


def test_doctor_on_a_box_that_refuses_exits_4():
    result = CliRunner().invoke(cli, ["doctor", "root@127.0.0.1:1", "--connect-timeout", "1"])
    assert result.exit_code == 4
    assert "connection refused" in result.output and "hint:" in result.output
