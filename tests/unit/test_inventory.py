import textwrap

import pytest

from provision.errors import ConfigError
from provision.inventory.hosts import Secret, load_inventory
from provision.ssh.sshconfig import load_ssh_config, parse_ssh_config

OWN = """\
defaults:
  user: linaro
  port: 22
  key: /run/sim/operator_key
  known_hosts: /run/sim/known_hosts
  become_password_file: /run/sim/become_password
groups:
  sim:
    hosts: [se7-1, se7-2]
    vars: {variant: auto}
    children: [lab]
  lab:
    hosts: [se7-3]
    vars: {variant: int4}
hosts:
  se7-1: {address: 10.213.7.11}
  se7-2: {address: 10.213.7.12, port: 2222, user: admin, password_env: SE7_PW}
  se7-3: {address: 10.213.7.13}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(*args, **kwargs):
    with pytest.raises(ConfigError) as info:
        load_inventory(*args, **kwargs)
    return str(info.value)


def test_own_yaml_resolves_defaults_groups_and_hosts(tmp_path):
    inv = load_inventory([write(tmp_path, "inv.yml", OWN)])
    assert inv.names() == ["se7-1", "se7-2", "se7-3"]
    one, two, three = inv.hosts
    assert (one.address, one.port, one.user, one.keys) == (
        "10.213.7.11",
        22,
        "linaro",
        ("/run/sim/operator_key",),
    )
    assert one.become_password == Secret(file="/run/sim/become_password")
    assert one.known_hosts == ("/run/sim/known_hosts",)
    assert one.groups == ("sim",)
    assert (two.port, two.user, two.password) == (2222, "admin", Secret(env="SE7_PW"))
    assert three.groups == ("sim", "lab") and three.variant == "int4"
    assert inv.groups["sim"] == ("se7-1", "se7-2", "se7-3")
    assert one.source.endswith("inv.yml:16")


def test_secrets_are_masked_in_public_view(tmp_path):
    inv = load_inventory([write(tmp_path, "inv.yml", OWN)])
    public = inv.get("se7-2").public()
    assert public["password"] == "env:SE7_PW"
    assert public["become_password"] == "file:/run/sim/become_password"


def test_secret_resolution(tmp_path, monkeypatch):
    pw = write(tmp_path, "pw", "s3cret\n")
    assert Secret(file=str(pw)).resolve() == "s3cret"
    monkeypatch.setenv("X_PW", "from-env")
    assert Secret(env="X_PW").resolve() == "from-env"
    assert Secret(env="UNSET_PW_VAR").resolve() is None
    assert "s3cret" not in repr(Secret(value="s3cret"))


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "port: 2222",
            "port: lots",
            "inv.yml:17: hosts.se7-2.port: must be a port number 1-65535, not 'lots'",
        ),
        (
            "vars: {variant: int4}",
            "vars: {variant: 'int4; reboot'}",
            "inv.yml:14: groups.lab.vars.variant: must be auto or a variant name",
        ),
        ("  se7-3: {address", "  se7-3: {adress", "inv.yml:18: hosts.se7-3.adress: unknown variable"),
        ("children: [lab]", "children: [lap]", "inv.yml:11: groups.sim.children[0]: unknown group 'lap'"),
        ("hosts: [se7-3]", "hosts: [se7-9]", "inv.yml:13: groups.lab.hosts[0]: unknown host 'se7-9'"),
    ],
)
def test_own_yaml_errors_name_file_line_and_key(tmp_path, old, new, expected):
    path = write(tmp_path, "inv.yml", OWN.replace(old, new))
    assert error_of([path]).replace(str(tmp_path) + "/", "").startswith(expected)


def test_duplicate_host_across_files_is_refused(tmp_path):
    a = write(tmp_path, "a.yml", OWN)
    b = write(tmp_path, "b.ini", "[x]\nse7-1 ansible_host=1.2.3.4\n")
    assert "b.ini:2: host 'se7-1' is defined twice (first at" in error_of([a, b])


def test_group_cycle_is_refused(tmp_path):
    path = write(tmp_path, "inv.yml", OWN.replace("    vars: {variant: int4}", "    children: [sim]"))
    assert "group cycle" in error_of([path])


INI = """\
# fleet
gw ansible_host=192.168.1.1

[se7]
se7-[01:03] ansible_user=admin
se7-10 ansible_host=10.0.0.10 ansible_port=2200 ansible_password='p w' ansible_become_password=x

[se7:vars]
ansible_ssh_private_key_file=~/.ssh/fleet
variant=int8

[airbox]
ab-1 ansible_host=10.0.1.1

[edge:children]
se7
airbox
"""


def test_ansible_ini(tmp_path):
    inv = load_inventory([write(tmp_path, "hosts.ini", INI)])
    assert inv.names() == ["gw", "se7-01", "se7-02", "se7-03", "se7-10", "ab-1"]
    se7 = inv.get("se7-02")
    assert (se7.address, se7.user, se7.variant) == ("se7-02", "admin", "int8")
    assert se7.keys[0].endswith("/.ssh/fleet") and not se7.keys[0].startswith("~")
    assert set(se7.groups) == {"se7", "edge"}
    ten = inv.get("se7-10")
    assert (ten.address, ten.port, ten.user) == ("10.0.0.10", 2200, "linaro")
    assert ten.password.resolve() == "p w" and ten.public()["password"] == "***"
    assert ten.become_password.describe() == "***"
    assert inv.groups["edge"] == ("se7-01", "se7-02", "se7-03", "se7-10", "ab-1")
    assert inv.get("gw").groups == ()


def test_ansible_ini_errors_have_lines(tmp_path):
    bad = write(tmp_path, "hosts.ini", INI.replace("ansible_port=2200", "ansible_port=22x0"))
    assert error_of([bad]).startswith(f"{bad}:6: port: must be a port number")
    bad = write(tmp_path, "h2.ini", "[a]\nbox1 ansible_host\n")
    assert error_of([bad]) == f"{bad}:2: box1: expected key=value, got 'ansible_host'"
    bad = write(tmp_path, "h3.ini", "[a:children]\nnope\n")
    assert error_of([bad]) == f"{bad}:2: a: unknown child group 'nope'"


ANSIBLE_YAML = """\
all:
  vars:
    ansible_user: linaro
  hosts:
    lone: {ansible_host: 10.9.9.9}
  children:
    se7:
      vars: {ansible_port: 2222}
      hosts:
        se7-a: {ansible_host: 10.0.0.1, ansible_become_password: pw}
        se7-b:
      children:
        lab:
          hosts:
            se7-c: {ansible_host: 10.0.0.3, rack: 4}
"""


def test_ansible_yaml(tmp_path):
    inv = load_inventory([write(tmp_path, "inv.yaml", ANSIBLE_YAML)])
    assert inv.names() == ["lone", "se7-a", "se7-b", "se7-c"]
    c = inv.get("se7-c")
    assert (c.address, c.port, c.user, c.groups, c.vars) == (
        "10.0.0.3",
        2222,
        "linaro",
        ("se7", "lab"),
        {"rack": 4},
    )
    assert inv.get("lone").port == 22
    assert inv.groups["se7"] == ("se7-a", "se7-b", "se7-c")


def test_ansible_yaml_error_is_located(tmp_path):
    path = write(tmp_path, "inv.yaml", ANSIBLE_YAML.replace("ansible_port: 2222", "ansible_port: [1]"))
    assert (
        error_of([path])
        == f"{path}:8: all.children.se7.vars.ansible_port: must be a port number 1-65535, not [1]"
    )


def test_adhoc_hosts():
    inv = load_inventory(adhoc=["linaro@10.0.0.5:22,se7-02", "root@[fe80::1]:2022"])
    assert [h.target for h in inv.hosts] == ["linaro@10.0.0.5:22", "linaro@se7-02:22", "root@[fe80::1]:2022"]
    assert "bad host" in error_of(adhoc=["a@b@c"])
    assert "bad host" in error_of(adhoc=["box;rm -rf /"])


def test_ssh_config_aliases_fill_gaps(tmp_path):
    config = write(
        tmp_path,
        "ssh_config",
        """\
        Host se7-02 se7-0?
          HostName 10.0.0.42
          User admin
          Port 2022
          IdentityFile ~/.ssh/se7
          ProxyJump bastion
        Host !se7-02 *
          User nobody
        Match host foo
          User matched
        """,
    )
    inv = load_inventory(adhoc=["se7-02", "other", "linaro@se7-03"], ssh_config=config)
    two = inv.get("se7-02")
    assert (two.address, two.user, two.port, two.proxy_jump) == ("10.0.0.42", "admin", 2022, "bastion")
    assert two.keys[0].endswith("/.ssh/se7")
    assert inv.get("other").user == "nobody"
    assert inv.get("se7-03").user == "linaro"  # explicit beats the alias


def test_ssh_config_include_and_match(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d", "10-lab", "Host lab-*\n  User lab\n  Include deeper\n")
    write(tmp_path / "conf.d", "20-other", "Host lab-2\n  Port 2200\n")
    write(tmp_path, "deeper", "  Port 2022\n")
    config = parse_ssh_config(
        "Include conf.d/*\n"
        "Match host box-1,box-2\n  User matched\n"
        "Match exec 'test -e /x' host box-3\n  User never\n"
        "Match all\n  IdentityFile ~/.ssh/fleet\n",
        base=tmp_path,
    )
    assert config.lookup("lab-2")["user"] == "lab" and config.lookup("lab-2")["port"] == 2022  # 10- first
    assert config.lookup("box-2")["user"] == "matched"
    assert "user" not in config.lookup("box-3")  # a Match we cannot judge never applies
    assert config.lookup("anything")["identityfile"][0].endswith("/.ssh/fleet")


def test_ssh_config_include_loop_is_an_error_with_its_place(tmp_path):
    loop = write(tmp_path, "loop", "Host a\n  Include loop\n")
    with pytest.raises(ConfigError, match="nested too deep") as caught:
        load_ssh_config(loop)
    assert f"{loop}:2" in str(caught.value)


def test_ssh_config_equals_syntax():
    config = parse_ssh_config("Host=a\n  HostName=1.2.3.4\n  Port = 23\n")
    assert config.lookup("a") == {"hostname": "1.2.3.4", "port": 23}


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("se7-1", ["se7-1"]),
        ("lab", ["se7-3"]),
        ("se7-*", ["se7-1", "se7-2", "se7-3"]),
        ("sim:!lab", ["se7-1", "se7-2"]),
        ("sim,&lab", ["se7-3"]),
        ("!se7-2", ["se7-1", "se7-3"]),
        ("all", ["se7-1", "se7-2", "se7-3"]),
    ],
)
def test_limit(tmp_path, pattern, expected):
    inv = load_inventory([write(tmp_path, "inv.yml", OWN)], limit=pattern)
    assert inv.names() == expected


def test_limit_matching_nothing_is_an_error(tmp_path):
    assert "--limit: no host or group nope in" in error_of([write(tmp_path, "inv.yml", OWN)], limit="nope")


def test_hosts_are_hashable_and_comparable(tmp_path):
    inv = load_inventory([write(tmp_path, "inv.yml", OWN)])
    assert len({*inv.hosts, *inv.hosts}) == 3
