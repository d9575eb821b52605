"""`sophon-fleet completion bash|zsh|fish`: the shell script; commands, options, host and group names
(from the inventory given with -i on the line being completed) complete."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from provision.cli.options import json_option
from provision.cli.output import Output

COMPLETE_VAR = "_SOPHON_FLEET_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
INSTALL = {
    "bash": 'eval "$(sophon-fleet completion bash)"        # in ~/.bashrc',
    "zsh": 'eval "$(sophon-fleet completion zsh)"         # in ~/.zshrc',
    "fish": "sophon-fleet completion fish > ~/.config/fish/completions/sophon-fleet.fish",
}


def complete_hosts(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Host and group names of the inventories already on the line (-i); nothing when there are none or
    they cannot be read (a completion never prints an error)."""
    from provision.inventory.hosts import load_inventory

    files = ctx.params.get("inventories") or ()
    if not files:
        return []
    try:
        inventory = load_inventory(files)
    except Exception:  # a half-typed or broken inventory: no suggestions  # noqa: BLE001
        return []
    head, sep, word = incomplete.rpartition(",")  # -l a,b<TAB> completes the last term
    prefix = head + sep
    names = [*inventory.names(), *inventory.groups]
    return [
        CompletionItem(prefix + name, help="group" if name in inventory.groups else None)
        for name in dict.fromkeys(names)
        if name.startswith(word.lstrip("!&"))
    ]


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@json_option
@click.pass_obj
def completion(out: Output, shell: str) -> None:
    """Print the completion script for SHELL (commands, options, and host and group names from -i).

    \b
    Examples:
      eval "$(sophon-fleet completion bash)"
      eval "$(sophon-fleet completion zsh)"
      sophon-fleet completion fish > ~/.config/fish/completions/sophon-fleet.fish
    """
    from provision.cli.main import cli

    shell_class = get_completion_class(shell)
    assert shell_class is not None  # click knows bash, zsh and fish
    script = shell_class(cli, {}, "sophon-fleet", COMPLETE_VAR).source()
    if out.json:
        out.emit_json({"shell": shell, "install": INSTALL[shell], "script": script})
        return
    click.echo(script)
