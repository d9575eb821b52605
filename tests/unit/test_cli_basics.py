from click.testing import CliRunner

from provision import __version__
from provision.cli.errors import Exit, exit_code_for
from provision.cli.main import cli
from provision.errors import ConfigError, ConnectError, HostKeyError


def test_version_prints_the_package_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_has_examples():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output


def test_config_error_names_file_line_and_key():
    error = ConfigError("must be a number", file="inv.yml", line=7, key="port")
    assert str(error) == "inv.yml:7: port: must be a number"
    assert exit_code_for(error) == Exit.USAGE


def test_host_key_error_maps_to_unreachable():
    assert exit_code_for(HostKeyError("changed")) == Exit.UNREACHABLE
    assert exit_code_for(ConnectError("down")) == Exit.UNREACHABLE
