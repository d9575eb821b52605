"""`sophon-fleet`: the top-level command group; subcommands load lazily from their modules."""

from __future__ import annotations

import difflib
import importlib
import sys
from pathlib import Path

import click

from provision import __version__
from provision.cli.output import Output
from provision.cli.runlog import start_run_log, stop_run_log
from provision.cli.verbosity import configure_logging, hoist_verbosity

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
    "status": "provision.cli.status:status",
    "exec": "provision.cli.boxes:exec_command",
    "reboot": "provision.cli.boxes:reboot_command",
    "completion": "provision.cli.completion:completion",
    "config": "provision.cli.config:config",
    "undeploy": "provision.cli.runtime_admin:undeploy",
    "logs": "provision.cli.runtime_admin:logs",
    "serve": "provision.cli.serve:serve",
    "gateway": "provision.cli.gateway:gateway",
    "model": "provision.cli.model:model",
}

EPILOG = """\b
Examples:
  sophon-fleet sim up --boxes 3            # a simulated fleet to try everything on
  sophon-fleet sim status
  sophon-fleet sim down
  sophon-fleet assets pull --variant int4  # verified, resumable download into the cache
"""


# command name -> its short help, so that `sophon-fleet --help` imports no command module (each pulls in
# paramiko, yaml, ...); tests/unit/test_cli_basics.py checks these against the commands' own docstrings.
SUMMARIES: dict[str, str] = {
    "assets": "Model files: download into a verified cache, pin them in a lock, distribute them to boxes.",
    "sim": "Simulated BM1684X boxes to build, test and rehearse on.",
    "inventory": "Show the hosts the other commands would work on (secrets masked; nothing connects).",
    "preflight": "Is every box ready for the model? One SSH round trip per box, all boxes in parallel.",
    "doctor": "Support block for one box: SoC/PCIe, bm_version, libsophon, driver, kernel, Python, sail, "
    "heaps, disk.",
    "deploy": "Install the chat runtime on each box and prove it with a selftest.",
    "chat": "Chat with the model on HOST (checks the box is ready first; says what is missing and the fix).",
    "bench": "Benchmark every ready box in parallel (one model per box): FTL and TPS, median/min/max.",
    "play": "Run PLAYBOOK (YAML, checked before anything connects) over the inventory.",
    "memory": "TPU memory layouts: plan, apply (memory_edit + verified boot image swap + reboot), roll back.",
    "serve": "The box's OpenAI-compatible chat API (`sophon-chat.service`, port 8000).",
    "gateway": "One endpoint for the whole fleet: HAProxy in front of every box's sophon-chat.service.",
    "model": "Models you build yourself: compile Hugging Face GLM-4 weights into a bmodel (tpu-mlir).",
    "status": "Each box now: reachable, uptime, heaps (size and in use), runtime version, variant, service.",
    "exec": "Run COMMAND on every box: each box's output, then a recap.",
    "reboot": "Reboot the boxes and wait until each runs a new boot (new boot_id) and answers again.",
    "completion": "Print the completion script for SHELL (commands, options, and host and group names "
    "from -i).",
    "config": "The config file (SOPHON_FLEET_HOME/config.yml): defaults for inventory, model, models, forks, "
    "cache, mirrors. The environment overrides it; flags override both.",
    "undeploy": "Remove runtime VERSION from the boxes (never the live one), or every version with --all.",
    "logs": "HOST's runtime and service logs (deploy history, the live runtime's selftest, the service's "
    "journal), or with --last the controller's own run log.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they run (help lists them from SUMMARIES)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, with each lazy command's short help taken from SUMMARIES."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in SUMMARIES:
                rows.append((name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)))
            else:  # a command without a summary yet is imported (slower, still right)
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_verbosity(args))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, with "did you mean preflight?" for a mistyped command."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=2, cutoff=0.6)
            if close:
                ctx.fail(f"No such command {name!r}. Did you mean {' or '.join(close)}?")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _p, value: _print_version(ctx) if value else None,
    help="The tool's, Python's and paramiko's versions, and the runtime it deploys; then exit.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v: each box's commands and timings (secrets masked); -vv: the libraries' detail too. "
    "Accepted anywhere on the line.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors (anywhere on the line).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Provision fleets of Sophgo BM1684X boxes (SE7, SM7, Airbox) for ChatGLM4-9B."""
    ctx.obj = Output(verbosity=-1 if quiet else verbose)
    configure_logging(ctx.obj)
    if not ctx.resilient_parsing and ctx.invoked_subcommand not in (None, "completion", "logs"):
        ours = Path(sys.argv[0]).name.startswith("sophon-fleet")  # else: run in-process (tests)
        handler = start_run_log(sys.argv[1:] if ours else [str(ctx.invoked_subcommand), "..."])
        if handler is not None:
            ctx.call_on_close(lambda: stop_run_log(handler))


def versions() -> dict[str, str]:
    """What `--version` prints, one `name version` line each (stable to grep)."""
    import platform
    from importlib.metadata import version

    from provision.runtime.deploy import runtime_app_id

    return {
        "sophon-fleet": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "paramiko": version("paramiko"),
        "runtime": runtime_app_id(),
    }


def _print_version(ctx: click.Context) -> None:
    for name, value in versions().items():
        click.echo(f"{name} {value}")
    ctx.exit(0)


def main() -> None:
    cli(prog_name="sophon-fleet")
