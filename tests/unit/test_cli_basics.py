import re

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


def test_help_lists_every_command_with_its_own_short_help_without_importing_it():
    """`sophon-fleet --help` takes the short help from SUMMARIES; it must read as click would render it."""
    import importlib

    import click

    from provision.cli.main import COMMANDS, SUMMARIES

    assert set(SUMMARIES) == set(COMMANDS)
    commands = {}
    for name, spec in COMMANDS.items():
        module, attr = spec.split(":")
        commands[name] = getattr(importlib.import_module(module), attr)
        for limit in (45, 80, 10_000):
            summary = click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)
            assert summary == commands[name].get_short_help_str(limit), name
    eager = click.Group("sophon-fleet", commands=commands)
    ctx = click.Context(cli, info_name="sophon-fleet")
    lazy_help, eager_help = click.HelpFormatter(width=100), click.HelpFormatter(width=100)
    cli.format_commands(ctx, lazy_help)
    eager.format_commands(click.Context(eager, info_name="sophon-fleet"), eager_help)
    assert lazy_help.getvalue() == eager_help.getvalue()
    assert re.search(r"\n  preflight +Is every box ready for the model\?", lazy_help.getvalue())


def test_config_error_names_file_line_and_key():
    error = ConfigError("must be a number", file="inv.yml", line=7, key="port")
    assert str(error) == "inv.yml:7: port: must be a number"
    assert exit_code_for(error) == Exit.USAGE


def test_host_key_error_maps_to_unreachable():
    assert exit_code_for(HostKeyError("changed")) == Exit.UNREACHABLE
    assert exit_code_for(ConnectError("down")) == Exit.UNREACHABLE
