import pytest


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory, monkeypatch):
    """Tool home, ssh config and known_hosts in a temp dir: no test reads ~/.ssh/config or known_hosts."""
    home = tmp_path_factory.mktemp("fleet-home")
    monkeypatch.setenv("SOPHON_FLEET_HOME", str(home / "home"))
    monkeypatch.setenv("SOPHON_FLEET_SSH_CONFIG", str(home / "ssh_config"))
    monkeypatch.setenv("SOPHON_FLEET_USER_KNOWN_HOSTS", str(home / "user_known_hosts"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home
