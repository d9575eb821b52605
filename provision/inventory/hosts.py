"""Inventories: which boxes, at which address, as whom, with which secrets.

Sources, merged in the order given: our own YAML format, Ansible INI and YAML inventories, ad-hoc `-H`
specs; `~/.ssh/config` aliases fill in what an entry leaves open (HostName, User, Port, IdentityFile,
ProxyJump). Secrets are references (an env var name or a file path; Ansible's literal passwords are kept
but always masked). Every problem is a ConfigError naming file, line and key; nothing here connects.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provision.errors import ConfigError
from provision.inventory.sources import (
    HOST_VARS,
    Entry,
    fleet_model,
    load_source,
    parse_adhoc,
    var_problem,
)
from provision.ssh.sshconfig import SshConfig, load_ssh_config
from provision.yamlfile import type_name

DEFAULT_USER = "linaro"
MASK = "***"


@dataclass(frozen=True)
class Secret:
    """Where a secret comes from: an env var, a file, or (Ansible inventories only) a literal value."""

    env: str | None = None
    file: str | None = None
    value: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A masked, printable description (`env:NAME`, `file:PATH`, `***`)."""
        if self.env:
            return f"env:{self.env}"
        if self.file:
            return f"file:{self.file}"
        return MASK

    def resolve(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The secret itself, or None when its env var is unset. Raises ConfigError for unreadable files."""
        if self.value is not None:
            return self.value
        if self.env:
            return (os.environ if environ is None else environ).get(self.env)
        if self.file:
            try:
                return Path(self.file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"cannot read secret file: {exc.strerror}", file=self.file) from exc
        return None


@dataclass(frozen=True)
class Host:
    """One box, fully resolved; `vars` keeps any extra (non-connection) variables."""

    name: str
    address: str
    port: int = 22
    user: str = DEFAULT_USER
    keys: tuple[str, ...] = ()
    password: Secret | None = None
    become_password: Secret | None = None
    known_hosts: tuple[str, ...] = ()
    proxy_jump: str | None = None
    variant: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: str = ""

    @property
    def target(self) -> str:
        """`user@address:port` for messages."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{address}:{self.port}"

    def public(self) -> dict[str, Any]:
        """The host as plain data with every secret masked (for `inventory --json` and logs)."""
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "keys": list(self.keys),
            "password": self.password.describe() if self.password else None,
            "become_password": self.become_password.describe() if self.become_password else None,
            "known_hosts": list(self.known_hosts),
            "proxy_jump": self.proxy_jump,
            "variant": self.variant or "auto",
            "groups": list(self.groups),
            "vars": {k: (MASK if _secret_name(k) else v) for k, v in sorted(self.vars.items())},
            "source": self.source,
        }


@dataclass(frozen=True)
class Inventory:
    """Hosts in file order, and group → member names."""

    hosts: tuple[Host, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # the files and -H specs it was read from, for messages
    models: tuple[Path, ...] = ()  # manifest directories the inventory names (`models:`), searched first
    model: str | None = None  # the manifest its commands take unless told (`model:`)

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def get(self, name: str, *, key: str = "HOST") -> Host:
        """The host called `name`; ConfigError "no host se7-9 in INV (did you mean se7-1?)" otherwise."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise self.unknown(name, key=key)

    def unknown(self, word: str, *, key: str, what: str = "host") -> ConfigError:
        """The error for a name or pattern that matches nothing here, with the closest names."""
        where = " ".join(self.sources) or "the inventory"
        close = _closest(word, [*self.names(), *self.groups])
        known = f"did you mean {' or '.join(close)}?" if close else f"known: {_few(self.names())}"
        return ConfigError(f"no {what} {word} in {where} ({known})", key=key)

    def limit(self, pattern: str | None) -> Inventory:
        """Hosts matching `--limit` (see `match_limit`); a term matching nothing is an error."""
        if not pattern:
            return self
        chosen = match_limit(self, pattern)
        return replace(self, hosts=tuple(h for h in self.hosts if h.name in chosen))


def _closest(word: str, names: Sequence[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The names most like `word`: those near the best match, best first, then in inventory order."""
    scored = [(difflib.SequenceMatcher(None, word, name).ratio(), i, name) for i, name in enumerate(names)]
    best = max((r for r, _, _ in scored), default=0.0)
    near = sorted((-r, i, name) for r, i, name in scored if r >= cutoff and r >= best - 0.1)
    return [name for _, _, name in near[:n]]


def _few(names: Sequence[str], limit: int = 8) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------- loading


def load_inventory(
    files: Iterable[str | Path] = (),
    adhoc: Iterable[str] = (),
    *,
    ssh_config: Path | None = None,
    limit: str | None = None,
) -> Inventory:
    """Merge inventory files and ad-hoc specs, resolve ssh config aliases, apply `--limit`.

    Raises ConfigError (file, line, key) for anything malformed, duplicate or unknown.
    """
    files = tuple(files)
    aliases = load_ssh_config(ssh_config) if ssh_config else SshConfig(())
    entries: list[Entry] = []
    groups: dict[str, list[str]] = {}
    for path in files:
        file_entries, file_groups = load_source(Path(path))
        entries += file_entries
        for group, members in file_groups.items():
            groups.setdefault(group, [])
            groups[group] += [m for m in members if m not in groups[group]]
    for spec in adhoc:
        entries += parse_adhoc(spec)
    hosts: dict[str, Host] = {}
    for entry in entries:
        if entry.name in hosts:
            raise entry.locate(
                None, f"host {entry.name!r} is defined twice (first at {hosts[entry.name].source})"
            )
        hosts[entry.name] = _resolve(entry, aliases)
    sources = (*(str(p) for p in files), *(f"-H {spec}" for spec in adhoc))
    named = [fleet_model(Path(path)) for path in files]
    models = tuple(d for dirs, _ in named for d in dirs)
    model = next((m for _, m in named if m), None)
    groups_ = {g: tuple(m) for g, m in groups.items()}
    inventory = Inventory(tuple(hosts.values()), groups_, sources, models, model)
    return inventory.limit(limit)


def _resolve(entry: Entry, aliases: SshConfig) -> Host:
    found = entry.vars
    alias = aliases.lookup(str(found.get("address") or entry.name))
    address = alias.get("hostname") or found.get("address") or entry.name
    port = _port(entry, found["port"] if "port" in found else alias.get("port", 22))
    keys = _strings(entry, "key", found.get("key")) or tuple(alias.get("identityfile", ()))
    extra = {
        k: v for k, v in found.items() if k not in HOST_VARS and k not in ("password", "become_password")
    }
    host = Host(
        name=entry.name,
        address=_text(entry, "address", address),
        port=port,
        user=_text(entry, "user", found.get("user") or alias.get("user") or DEFAULT_USER),
        keys=tuple(os.path.expanduser(k) for k in keys),
        password=_secret(entry, found, "password"),
        become_password=_secret(entry, found, "become_password"),
        known_hosts=tuple(
            os.path.expanduser(p) for p in _strings(entry, "known_hosts", found.get("known_hosts"))
        ),
        proxy_jump=_optional_text(entry, "proxy_jump", found.get("proxy_jump") or alias.get("proxyjump")),
        variant=_variant(entry, found.get("variant")),
        groups=entry.groups,
        vars=extra,
        source=entry.source,
    )
    return host


def _port(entry: Entry, value: Any) -> int:
    problem = var_problem("port", value)
    if problem:
        raise entry.locate("port", problem)
    return int(value)


def _text(entry: Entry, key: str, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise entry.locate(key, f"must be text, not {type_name(value)}")
    problem = var_problem(key, str(value))  # whatever source it came from (INI, -H, ssh_config)
    if problem:
        raise entry.locate(key, problem)
    return str(value)


def _optional_text(entry: Entry, key: str, value: Any) -> str | None:
    return None if value is None else _text(entry, key, value)


def _strings(entry: Entry, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise entry.locate(key, f"must be a path or a list of paths, not {type_name(value)}")


def _variant(entry: Entry, value: Any) -> str | None:
    problem = var_problem("variant", value)
    if problem:
        raise entry.locate("variant", problem)
    return None if value in (None, "auto") else value


def _secret(entry: Entry, found: dict[str, Any], kind: str) -> Secret | None:
    env, file, literal = found.get(f"{kind}_env"), found.get(f"{kind}_file"), found.get(kind)
    if sum(v is not None for v in (env, file, literal)) > 1:
        raise entry.locate(f"{kind}_env", f"give only one of {kind}_env, {kind}_file")
    if env is not None:
        return Secret(env=_text(entry, f"{kind}_env", env))
    if file is not None:
        return Secret(file=os.path.expanduser(_text(entry, f"{kind}_file", file)))
    if literal is not None:
        return Secret(value=str(literal))
    return None


def _secret_name(key: str) -> bool:
    return any(word in key.lower() for word in ("pass", "secret", "token"))


# ---------------------------------------------------------------------------------------------- --limit


def match_limit(inventory: Inventory, pattern: str) -> set[str]:
    """Ansible-style: `a,b` or `a:b` union, `&g` intersection, `!x` exclusion; names, groups and globs."""
    parts = [p for p in re.split(r"[,:]", pattern) if p] if "[" not in pattern else pattern.split(",")
    if not parts:
        raise ConfigError(f"{pattern!r} names no host", key="--limit")
    chosen: set[str] = set()
    for part in (p for p in parts if p[0] not in "!&"):
        chosen |= _match_one(inventory, part)
    for part in (p for p in parts if p[0] == "&"):
        chosen &= _match_one(inventory, part[1:])
    for part in (p for p in parts if p[0] == "!"):
        chosen -= _match_one(inventory, part[1:])
    if all(p[0] in "!&" for p in parts):
        chosen = set(inventory.names()) - set().union(*(_match_one(inventory, p[1:]) for p in parts))
    if not chosen:
        raise ConfigError(f"{pattern!r} leaves no host", key="--limit")
    return chosen


def _match_one(inventory: Inventory, word: str) -> set[str]:
    """The hosts one --limit term names; a term naming nothing is an error (a typo must not shrink a run)."""
    if word == "all" or word == "*":
        return set(inventory.names())
    result = set()
    for group, members in inventory.groups.items():
        if fnmatch.fnmatchcase(group, word):
            result |= set(members)
    for host in inventory.hosts:
        if fnmatch.fnmatchcase(host.name, word) or word in host.groups:
            result.add(host.name)
    if not result:
        raise inventory.unknown(word, key="--limit", what="host or group")
    return result


def parse_adhoc_host(spec: str) -> Host:
    """One `[user@]host[:port]` as a Host (e.g. a ProxyJump target that is not in the inventory)."""
    entries = parse_adhoc(spec)
    if len(entries) != 1:
        raise ConfigError(f"expected one host, got {spec!r}", key="proxy_jump")
    return _resolve(entries[0], SshConfig(()))


def with_overrides(host: Host, **changes: Any) -> Host:
    """A copy of `host` with some fields changed (e.g. a resolved jump host)."""
    return replace(host, **changes)
