"""`sophon-fleet`: the top-level command group; subcommands load lazily from their modules."""

from __future__ import annotations

import importlib

import click

from provision import __version__
from provision.cli.output import Output

# command name -> "module:attribute"; loaded on first use so `--help` and small commands stay fast.
COMMANDS: dict[str, str] = {
    "assets": "provision.cli.assets:assets",
    "sim": "sim.cli:sim",
    "inventory": "provision.cli.inventory:inventory",
    "preflight": "provision.cli.preflight:preflight",
    "doctor": "provision.cli.preflight:doctor",
    "deploy": "provision.cli.deploy:deploy",
    "chat": "provision.cli.chat:chat",
    "bench": "provision.cli.bench:bench",
    "play": "provision.cli.play:play",
    "memory": "provision.cli.memory:memory",
    "model": "provision.cli.model:model",
}

EPILOG = """\b
Examples:
  sophon-fleet sim up --boxes 3            # a simulated fleet to try everything on
  sophon-fleet sim status
  sophon-fleet sim down
  sophon-fleet assets pull --variant int4  # verified, resumable download into the cache
"""


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they run (or when help lists them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sophon-fleet")
@click.option("-v", "--verbose", count=True, help="More detail (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Provision fleets of Sophgo BM1684X boxes (SE7, SM7, Airbox) for ChatGLM4-9B."""
    ctx.obj = Output(verbosity=-1 if quiet else verbose)


def main() -> None:
    cli(prog_name="sophon-fleet")
