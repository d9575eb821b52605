"""The inventory sources: our own YAML, Ansible INI and YAML inventories, ad-hoc `-H` specs.

Each parser turns its source into `Entry`s (a host's name, its merged vars, groups, where it was defined and
how to locate an error in it) and group memberships; `provision.inventory.hosts` resolves entries into Hosts.
Every problem is a ConfigError naming file, line and key.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import ConfigError
from provision.yamlfile import KeyPath, Located, parse_yaml, read_text_file, type_name

# our own host vars (own YAML format; also accepted in Ansible inventories)
HOST_VARS = {
    "address",
    "port",
    "user",
    "key",
    "password_env",
    "password_file",
    "become_password_env",
    "become_password_file",
    "known_hosts",
    "variant",
    "proxy_jump",
}
# Ansible's names for the same things
ANSIBLE_VARS: dict[str, str] = {
    "ansible_host": "address",
    "ansible_ssh_host": "address",
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
    "ansible_ssh_private_key_file": "key",
    "ansible_private_key_file": "key",
    "ansible_password": "password",
    "ansible_ssh_pass": "password",
    "ansible_ssh_password": "password",
    "ansible_become_password": "become_password",
    "ansible_become_pass": "become_password",
}


@dataclass(frozen=True)
class Entry:
    """A host as a source describes it, before defaults and ssh config fill the gaps."""

    name: str
    vars: dict[str, Any]
    groups: tuple[str, ...]
    source: str
    locate: Any  # (key) -> ConfigError factory: lambda key, msg -> ConfigError


def load_source(path: Path) -> tuple[list[Entry], dict[str, list[str]]]:
    text = read_text_file(path, "inventory")
    if path.suffix in (".ini", ".cfg", "") and not _looks_like_yaml(text):
        return parse_ansible_ini(text, str(path))
    doc = parse_yaml(text, str(path))
    if _own_format(doc):
        return parse_own_yaml(doc)
    return parse_ansible_yaml(doc)


def _own_format(doc: Located) -> bool:
    return isinstance(doc.data, dict) and bool(doc.data) and set(doc.data) <= OWN_KEYS


def fleet_model(path: Path) -> tuple[tuple[Path, ...], str | None]:
    """Our YAML's `models: DIR` (or a list; where this fleet's manifests live, relative to the file) and
    `model: NAME` (the manifest its commands take unless told).

    `sim up` writes both, so the simulated fleet's inventory alone points every command at its stand-ins
    and its mirror."""
    if path.suffix not in (".yml", ".yaml"):
        return (), None
    doc = parse_yaml(read_text_file(path, "inventory"), str(path))
    if not _own_format(doc):
        return (), None
    value, model = doc.data.get("models"), doc.data.get("model")
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise doc.error(("models",), f"must be a directory or a list of directories, not {type_name(value)}")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise doc.error(("model",), f"must be a manifest name, not {type_name(model)}")
    return tuple(path.parent / os.path.expanduser(v) for v in items), model


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", ";")):
            return not stripped.startswith("[") and stripped.endswith(":")
    return False


# ---- own YAML format


OWN_KEYS = {"defaults", "groups", "hosts", "models", "model"}


def parse_own_yaml(doc: Located) -> tuple[list[Entry], dict[str, list[str]]]:
    """`defaults:` (vars), `groups: {g: {hosts: [..], vars: {..}, children: [..]}}`, `hosts: {name: vars}`."""
    data = doc.data
    defaults = _vars(doc, ("defaults",), data.get("defaults") or {})
    hosts = data.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise doc.error(("hosts",), f"must be a mapping of host name to vars, not {type_name(hosts)}")
    raw_groups = data.get("groups") or {}
    if not isinstance(raw_groups, dict):
        raise doc.error(
            ("groups",), f"must be a mapping of group name to members, not {type_name(raw_groups)}"
        )
    groups = {name: _own_group(doc, name, spec, hosts) for name, spec in raw_groups.items()}
    members = _expand_children(doc, groups, {n: spec[1] for n, spec in groups.items()})
    entries = []
    for name, host_vars in hosts.items():
        _check_name(doc, ("hosts", name), name)
        merged = dict(defaults)
        in_groups = tuple(g for g in groups if name in members[g])
        for group in in_groups:
            merged.update(groups[group][2])
        merged.update(_vars(doc, ("hosts", name), host_vars or {}))
        entries.append(_entry(doc, ("hosts", name), name, merged, in_groups))
    return entries, {g: members[g] for g in groups}


def _group_spec(doc: Located, path: KeyPath, spec: Any) -> dict:
    """A group's mapping (hosts, vars, children; an empty group is {}), else a located error."""
    spec = spec or {}
    if not isinstance(spec, dict):
        raise doc.error(path, f"must be a mapping with hosts, vars, children, not {type_name(spec)}")
    for key in spec:
        if key not in ("hosts", "vars", "children"):
            raise doc.error((*path, key), "unknown key (expected one of: children, hosts, vars)")
    return spec


def _own_group(
    doc: Located, name: str, spec: Any, hosts: dict[str, Any]
) -> tuple[list[str], list[str], dict]:
    path: KeyPath = ("groups", name)
    spec = _group_spec(doc, path, spec)
    members = _name_list(doc, (*path, "hosts"), spec.get("hosts"))
    for i, member in enumerate(members):
        if member not in hosts:
            raise doc.error((*path, "hosts", i), f"unknown host {member!r} (define it under hosts:)")
    children = _name_list(doc, (*path, "children"), spec.get("children"))
    return members, children, _vars(doc, (*path, "vars"), spec.get("vars") or {})


def _expand_children(doc: Located, groups: dict[str, tuple], children: dict[str, list[str]]) -> dict:
    def members(group: str, seen: tuple[str, ...]) -> list[str]:
        if group in seen:
            raise doc.error(("groups", group, "children"), f"group cycle: {' -> '.join((*seen, group))}")
        result = list(groups[group][0])
        for i, child in enumerate(children[group]):
            if child not in groups:
                raise doc.error(("groups", group, "children", i), f"unknown group {child!r}")
            result += [m for m in members(child, (*seen, group)) if m not in result]
        return result

    return {g: members(g, ()) for g in groups}


def _name_list(doc: Located, path: KeyPath, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise doc.error(path, f"must be a list of names, not {type_name(value)}")
    return value


def _vars(doc: Located, path: KeyPath, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(path, f"must be a mapping of variables, not {type_name(value)}")
    result = {}
    for name, item in value.items():
        key = ANSIBLE_VARS.get(str(name), str(name))
        if key not in HOST_VARS and key not in ("password", "become_password"):
            known = ", ".join(sorted(HOST_VARS))
            raise doc.error((*path, key), f"unknown variable (expected one of: {known})")
        result[key] = _checked(doc, (*path, key), key, item)
    return result


def _checked(doc: Located, path: KeyPath, key: str, value: Any) -> Any:
    """Check a variable where it is defined, so the error points at that line."""
    problem = var_problem(key, value)
    if problem:
        raise doc.error(path, problem)
    return value


# Values that end up in an SSH target, a `ssh -J` spec or a terminal: no shell metacharacters, no
# whitespace or newlines, no control characters (nothing ran with them, but nothing may).
_TEXT_VARS = {
    "user": (re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$"), "a user name (letters, digits, . _ -)"),
    "address": (
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:%_-]{0,252}$"),
        "a host name or IP address (letters, digits, . : % _ -)",
    ),
    "proxy_jump": (
        re.compile(r"^[A-Za-z0-9_.:%@,\[\]-]{1,1000}$"),
        "[user@]host[:port],... (letters, digits, . : % _ - @ , [ ])",
    ),
}


def var_problem(key: str, value: Any) -> str | None:
    """What is wrong with a connection variable's value, or None."""
    if key in _TEXT_VARS and isinstance(value, str):
        pattern, want = _TEXT_VARS[key]
        if not pattern.match(value):
            return f"must be {want}, not {value!r}"
    if key == "port":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.isdigit()
        )
        if not ok or not 0 < int(value) < 65536:
            return f"must be a port number 1-65535, not {value!r}"
    if key == "variant" and value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", str(value)):
        return f"must be auto or a variant name of the model's manifest (int8, int4, ...), not {value!r}"
    return None


# ---- Ansible YAML


def parse_ansible_yaml(doc: Located) -> tuple[list[Entry], dict[str, list[str]]]:
    """Ansible's YAML inventory: `all: {hosts: {h: vars}, vars: {}, children: {g: {...}}}` (any top group)."""
    if not isinstance(doc.data, dict):
        raise doc.error((), f"an inventory must be a mapping, not {type_name(doc.data)}")
    host_vars: dict[str, dict[str, Any]] = {}
    host_paths: dict[str, KeyPath] = {}
    host_groups: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}

    def walk(group: str, spec: Any, path: KeyPath, inherited: dict[str, Any], chain: tuple[str, ...]) -> None:
        if group in chain:
            raise doc.error(path, f"group cycle: {' -> '.join((*chain, group))}")
        spec = _group_spec(doc, path, spec)
        scope = {**inherited, **_ansible_vars(doc, (*path, "vars"), spec.get("vars") or {})}
        groups.setdefault(group, [])
        hosts = spec.get("hosts") or {}
        if not isinstance(hosts, dict):
            raise doc.error(
                (*path, "hosts"), f"must be a mapping of host name to vars, not {type_name(hosts)}"
            )
        for name, own in hosts.items():
            _check_name(doc, (*path, "hosts", name), name)
            merged = {**host_vars.get(name, {}), **scope}
            merged.update(_ansible_vars(doc, (*path, "hosts", name), own or {}))
            host_vars[name] = merged
            host_paths.setdefault(name, (*path, "hosts", name))
            host_groups.setdefault(name, [])
            for g in (*chain, group):
                if g not in host_groups[name]:
                    host_groups[name].append(g)
                if name not in groups.setdefault(g, []):
                    groups[g].append(name)
        children = spec.get("children") or {}
        if not isinstance(children, dict):
            raise doc.error((*path, "children"), f"must be a mapping of groups, not {type_name(children)}")
        for child, child_spec in children.items():
            walk(child, child_spec, (*path, "children", child), scope, (*chain, group))

    for group, spec in doc.data.items():
        walk(group, spec, (group,), {}, ())
    entries = [
        _entry(doc, host_paths[n], n, host_vars[n], tuple(g for g in host_groups[n] if g != "all"))
        for n in host_vars
    ]
    return entries, {g: m for g, m in groups.items() if g != "all"}


def _ansible_vars(doc: Located, path: KeyPath, value: Any) -> dict[str, Any]:
    """Ansible vars: known connection vars are translated, anything else is kept as an extra var."""
    if not isinstance(value, dict):
        raise doc.error(path, f"must be a mapping of variables, not {type_name(value)}")
    result = {}
    for name, item in value.items():
        key = ANSIBLE_VARS.get(str(name), str(name))
        result[key] = _checked(doc, (*path, str(name)), key, item)
    return result


# ---- Ansible INI

_SECTION = re.compile(r"^\[([^\]:\s]+)(?::(vars|children))?\]\s*$")
_RANGE = re.compile(r"\[([0-9a-z]+):([0-9a-z]+)\]")
MAX_RANGE_HOSTS = 10_000  # one host line's ranges together; a fleet line like se7-[001:999] is far below


def parse_ansible_ini(text: str, file: str) -> tuple[list[Entry], dict[str, list[str]]]:
    """Ansible's INI inventory: `[group]` host lines with `k=v`, `[g:vars]`, `[g:children]`, ranges."""
    host_vars: dict[str, dict[str, Any]] = {}
    host_line: dict[str, int] = {}
    members: dict[str, list[str]] = {"ungrouped": []}
    group_vars: dict[str, dict[str, Any]] = {}
    children: dict[str, list[tuple[str, int]]] = {}
    section, kind = "ungrouped", None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if not match:
                raise ConfigError(f"bad section header {line!r}", file=file, line=number)
            section, kind = match.group(1), match.group(2)
            members.setdefault(section, [])
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"expected key=value, got {line!r}", file=file, line=number, key=section)
            group_vars.setdefault(section, {})[ANSIBLE_VARS.get(key.strip(), key.strip())] = _ini_value(value)
        elif kind == "children":
            children.setdefault(section, []).append((line.split()[0], number))
        else:
            for name, own in _ini_host(line, file, number):
                host_vars.setdefault(name, {}).update(own)
                host_line.setdefault(name, number)
                if name not in members[section]:
                    members[section].append(name)
    groups = _ini_groups(members, children, file)
    entries = []
    for name, own in host_vars.items():
        in_groups = tuple(g for g in groups if name in groups[g] and g != "ungrouped")
        merged: dict[str, Any] = dict(group_vars.get("all", {}))
        for group in in_groups:
            merged.update(group_vars.get(group, {}))
        merged.update(own)
        locate = _line_locator(file, host_line[name])
        entries.append(Entry(name, merged, in_groups, f"{file}:{host_line[name]}", locate))
    return entries, {g: m for g, m in groups.items() if g not in ("ungrouped", "all")}


def _ini_host(line: str, file: str, number: int) -> list[tuple[str, dict[str, Any]]]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ConfigError(f"cannot split host line: {exc}", file=file, line=number) from exc
    own: dict[str, Any] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {word!r}", file=file, line=number, key=words[0])
        own[ANSIBLE_VARS.get(key, key)] = _ini_value(value)
    names = _expand_range(words[0], file, number)
    for name in names:
        _check_name_at(name, file, number)
    return [(n, dict(own)) for n in names]


def _expand_range(pattern: str, file: str, number: int) -> list[str]:
    """`se7-[01:12]`, `box[a:c]`: every name, refused (before expanding) above MAX_RANGE_HOSTS."""
    bounds = [_range_values(m, file, number) for m in _RANGE.finditer(pattern)]
    count = 1
    for first, last, _ in bounds:
        count *= max(last - first + 1, 0)
        if count > MAX_RANGE_HOSTS:
            raise ConfigError(
                f"host range {pattern!r} names more than {MAX_RANGE_HOSTS} hosts", file=file, line=number
            )
    return _expand(pattern, file, number)


def _range_values(match: re.Match[str], file: str, number: int) -> tuple[int, int, bool]:
    start, end = match.groups()
    if start.isdigit() and end.isdigit():
        return int(start), int(end), True
    if len(start) == len(end) == 1 and not start.isdigit() and not end.isdigit():
        return ord(start), ord(end), False
    raise ConfigError(f"bad host range {match.group(0)!r}", file=file, line=number)


def _expand(pattern: str, file: str, number: int) -> list[str]:
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    first, last, digits = _range_values(match, file, number)
    width = len(match.group(1))
    values = [str(i).zfill(width) if digits else chr(i) for i in range(first, last + 1)]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for v in values for name in _expand(head + v + tail, file, number)]


def _ini_groups(members: dict[str, list[str]], children: dict[str, list[tuple[str, int]]], file: str):
    def expand(group: str, chain: tuple[str, ...]) -> list[str]:
        result = list(members.get(group, []))
        for child, number in children.get(group, []):
            if child in chain:
                raise ConfigError(f"group cycle: {' -> '.join((*chain, child))}", file=file, line=number)
            if child not in members and child not in children:
                raise ConfigError(f"unknown child group {child!r}", file=file, line=number, key=group)
            result += [m for m in expand(child, (*chain, child)) if m not in result]
        return result

    return {g: expand(g, (g,)) for g in {*members, *children}}


def _ini_value(value: str) -> Any:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return int(value) if value.isdigit() else value


def _line_locator(file: str, line: int):
    return lambda key, message: ConfigError(message, file=file, line=line, key=key)


# ---- ad-hoc -H

_ADHOC = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:@\s]+))(?::(?P<port>\d+))?$"
)


def parse_adhoc(spec: str) -> list[Entry]:
    """`-H linaro@10.0.0.5:22,se7-02`: comma-separated `[user@]host[:port]` (IPv6 in brackets)."""
    entries = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        match = _ADHOC.match(item)
        if not match:
            raise ConfigError(f"bad host {item!r} (expected [user@]host[:port])", key="-H")
        address = match.group("v6") or match.group("host")
        _check_name_at(address, "-H", None)
        found: dict[str, Any] = {"address": address}
        if match.group("user"):
            found["user"] = match.group("user")
        if match.group("port"):
            found["port"] = int(match.group("port"))
        locate = lambda key, message: ConfigError(message, key=f"-H {key or ''}".strip())  # noqa: E731
        entries.append(Entry(address, found, (), f"-H {item}", locate))
    return entries


# ---- resolution

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:%\[\]-]+$")


def _check_name(doc: Located, path: KeyPath, name: Any) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise doc.error(path, f"bad host name {name!r} (letters, digits, . _ - : only)")


def _check_name_at(name: str, file: str, line: int | None) -> None:
    if not _SAFE_NAME.match(name):
        raise ConfigError(f"bad host name {name!r} (letters, digits, . _ - : only)", file=file, line=line)


def _entry(doc: Located, path: KeyPath, name: str, found: dict[str, Any], groups: tuple[str, ...]) -> Entry:
    def locate(key: str | None, message: str) -> ConfigError:
        return doc.error((*path, key) if key else path, message)

    return Entry(name, found, groups, f"{doc.file}:{doc.line_of(path)}", locate)
