"""Options every fleet command shares: which hosts (-i, -H, --limit) and how to reach them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provision.cli.completion import complete_hosts
from provision.cli.options import model_name
from provision.cli.verbosity import SECRETS
from provision.errors import ConfigError
from provision.fleet import DEFAULT_FORKS
from provision.inventory.hosts import Host, Inventory, load_inventory, match_limit
from provision.manifest import Manifest, load_manifest
from provision.settings import Settings, load_settings

if TYPE_CHECKING:  # paramiko is imported when a command connects, not for --help
    from provision.ssh.transport import Connector


@dataclass(frozen=True)
class Reach:
    """The parsed host options of one command."""

    inventories: tuple[str, ...]
    adhoc: tuple[str, ...]
    limit: str | None
    accept_new: bool
    ask_become_pass: bool
    forks: int
    connect_timeout: float


def host_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-i/-H/--limit/--accept-new/-K/--forks/--connect-timeout, collected into one `reach` argument."""

    options = [
        click.option(
            "-i",
            "--inventory",
            "inventories",
            multiple=True,
            metavar="FILE",
            help="Inventory file: our YAML, Ansible INI or YAML (repeatable).",
        ),
        click.option(
            "-H",
            "--hosts",
            "adhoc",
            multiple=True,
            metavar="SPEC",
            help="Ad-hoc hosts: [user@]host[:port],... (ssh config aliases work).",
        ),
        click.option(
            "-l",
            "--limit",
            metavar="PATTERN",
            shell_complete=complete_hosts,
            help="Only these hosts: names, groups, globs; !x, &g.",
        ),
        click.option(
            "--accept-new",
            is_flag=True,
            help="Pin unknown host keys to sophon-fleet's known_hosts (changed keys are always refused).",
        ),
        click.option("-K", "--ask-become-pass", is_flag=True, help="Ask once for the sudo password."),
        click.option(
            "-f",
            "--forks",
            type=click.IntRange(min=1),
            default=None,
            show_default=f"the config file's forks:, else {DEFAULT_FORKS}",
            help="Boxes worked on at once.",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0.1),
            default=10.0,
            show_default=True,
            help="Seconds to wait for a box to answer.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def reach_from(kwargs: dict[str, Any]) -> Reach:
    """Pop the host options out of a command's kwargs."""
    return Reach(
        inventories=tuple(kwargs.pop("inventories")),
        adhoc=tuple(kwargs.pop("adhoc")),
        limit=kwargs.pop("limit"),
        accept_new=kwargs.pop("accept_new"),
        ask_become_pass=kwargs.pop("ask_become_pass"),
        forks=kwargs.pop("forks") or load_settings().forks or DEFAULT_FORKS,
        connect_timeout=kwargs.pop("connect_timeout"),
    )


def resolve_inventory(
    reach: Reach, settings: Settings | None = None, *, extra_adhoc: tuple[str, ...] = ()
) -> Inventory:
    """The hosts a command works on. Raises ConfigError (exit 2) before anything connects."""
    settings = settings or load_settings()
    adhoc = reach.adhoc + extra_adhoc
    files: tuple[str | Path, ...] = reach.inventories or (() if adhoc else settings.inventories)
    if not files and not adhoc:
        raise ConfigError(
            "no hosts given",
            key="-i",
            hint="give -i INVENTORY (e.g. the one `sim up` prints) or -H HOST, or set `inventory:` in "
            f"{settings.home / 'config.yml'}",
        )
    return load_inventory(files, adhoc, ssh_config=settings.ssh_config, limit=reach.limit)


def one_host(reach: Reach, host: str, settings: Settings | None = None) -> tuple[Inventory, Host]:
    """HOST of a one-box command: a name (or a pattern naming one host) from -i / -H, or, when it looks like
    an address (`user@`, a dot, a colon) or no inventory is given, an ad-hoc [user@]host[:port].
    Raises ConfigError "no host se7-9 in INV (did you mean se7-1?)" (exit 2)."""
    settings = settings or load_settings()
    if reach.inventories or reach.adhoc or settings.inventories:
        inv = resolve_inventory(reach, settings)
        if host in inv.names():
            return inv, inv.get(host)
        if not _looks_like_address(host):
            try:
                names = match_limit(inv, host)
            except ConfigError:
                raise inv.unknown(host, key="HOST") from None
            if len(names) != 1:
                raise ConfigError(f"{host!r} names {len(names)} hosts; give exactly one", key="HOST")
            return inv, inv.get(names.pop())
    bare = Reach(**{**reach.__dict__, "inventories": (), "adhoc": (), "limit": None})
    inv = resolve_inventory(bare, settings, extra_adhoc=(host,))
    return inv, inv.hosts[0]


def _mask_secrets(inventory: Inventory, typed: str | None) -> None:
    """Every password of this run is masked in -v/-vv output (it never is in a command line anyway)."""
    SECRETS.add(typed)
    for host in inventory.hosts:
        for secret in (host.password, host.become_password):
            try:
                SECRETS.add(secret.resolve() if secret else None)
            except ConfigError:
                pass  # unreadable: it is reported when the box needs it


def _looks_like_address(text: str) -> bool:
    return any(mark in text for mark in "@.:")


def fleet_manifest(model: str | None, inventory: Inventory) -> Manifest:
    """The manifest of this run: -m, else SOPHON_FLEET_MODEL, else the inventory's `model:`, else glm4-9b;
    by name from SOPHON_FLEET_MODELS, the inventory's `models:`, then the shipped models/."""
    return load_manifest(model_name(model, inventory.model), inventory.models)


def connector_for(reach: Reach, inventory: Inventory, settings: Settings | None = None) -> Connector:
    """A Connector for this run; asks once for the sudo password (-K, or on a terminal if needed)."""
    from provision.ssh.transport import Connector, Timeouts, Trust

    settings = settings or load_settings()
    password = None
    needs = any(h.become_password is None for h in inventory.hosts)
    if reach.ask_become_pass or (needs and sys.stdin.isatty()):
        password = click.prompt(
            "sudo password for the boxes (empty: sudo -n)",
            hide_input=True,
            err=True,
            default="",
            show_default=False,
        )
        password = password or None
    _mask_secrets(inventory, password)
    names = {h.name: h for h in inventory.hosts}
    return Connector(
        Trust(settings.known_hosts, settings.user_known_hosts, accept_new=reach.accept_new),
        timeouts=Timeouts(
            connect=reach.connect_timeout, banner=reach.connect_timeout, auth=reach.connect_timeout
        ),
        become_password=password,
        lookup=names.get,
    )
