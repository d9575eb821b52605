"""YAML loading that remembers where every value came from, so errors name file, line and key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provision.errors import ConfigError

KeyPath = tuple[str | int, ...]
# libyaml's parser when PyYAML has it (about 10x faster; same nodes and marks), else the pure-Python one
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Located:
    """Plain Python data from a YAML file plus the line of every key and item in it."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest parent that has one (1-based)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def error(self, path: KeyPath, message: str, hint: str | None = None) -> ConfigError:
        """A ConfigError located at `path` (dotted key, e.g. `variants.int4.files[0]`)."""
        return ConfigError(
            message, file=self.file, line=self.line_of(path), key=dotted(path) or None, hint=hint
        )


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# Bounds for files a user (or someone who handed them a file) controls: a legitimate inventory of thousands
# of boxes is a few hundred KiB; a billion-laughs file is a few hundred bytes that expands without end.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # values after alias expansion
MAX_DEPTH = 64


def read_text_file(path: Path | str, what: str = "file") -> str:
    """A UTF-8 text file of at most MAX_FILE_BYTES; anything else is a ConfigError naming the file.

    Raises:
        ConfigError: unreadable, too large, binary (NUL bytes) or not UTF-8.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=str(path)) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{what} is larger than {MAX_FILE_BYTES >> 20} MiB; refusing to parse it", file=str(path)
        )
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise ConfigError(f"{what} is binary (NUL byte), not text", file=str(path), line=line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{what} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            file=str(path),
            line=line,
        ) from None


def load_yaml(path: Path | str) -> Located:
    """Parse a YAML file; syntax errors, duplicate keys and hostile files (too large, binary, alias bombs,
    recursive aliases, too deep) become ConfigError with file and line."""
    return parse_yaml(read_text_file(path), str(path))


def parse_yaml(text: str, file: str) -> Located:
    try:
        node = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file, line=line) from exc
    if node is None:
        return Located(file=file, data=None)
    _check_bounds(node, file)
    lines: dict[KeyPath, int] = {}
    scalars = yaml.SafeLoader("")
    return Located(file=file, data=_convert(node, (), lines, file, scalars), lines=lines)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_bounds(root: yaml.Node, file: str) -> None:
    """Refuse recursive aliases, nesting deeper than MAX_DEPTH and more than MAX_NODES values after alias
    expansion, before anything is expanded: sizes are counted once per distinct node (iteratively)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"expands to more than {MAX_NODES} values (an alias bomb?); refusing it",
                    file=file,
                    line=line,
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(
                "recursive alias (a value contains itself)", file=file, line=node.start_mark.line + 1
            )
        if len(on_path) >= MAX_DEPTH:
            raise ConfigError(
                f"nested deeper than {MAX_DEPTH} levels", file=file, line=node.start_mark.line + 1
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _convert(
    node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str, scalars: yaml.SafeLoader
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in result:
                line = key_node.start_mark.line + 1
                raise ConfigError("duplicate key", file=file, line=line, key=dotted((*path, key)))
            lines[tuple((*path, key))] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, (*path, key), lines, file, scalars)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, file, scalars) for i, item in enumerate(node.value)]
    try:
        return scalars.construct_object(node)
    except (yaml.YAMLError, ValueError) as exc:  # an unknown tag, an int beyond Python's digit limit
        line = node.start_mark.line + 1
        raise ConfigError(f"invalid value: {exc}", file=file, line=line, key=dotted(path) or None) from None


def iter_mapping(doc: Located, path: KeyPath, value: Any) -> Iterator[tuple[str, Any]]:
    """Items of a mapping at `path`, or a located error when it is not a mapping."""
    if not isinstance(value, Mapping):
        raise doc.error(path, f"must be a mapping, not {type_name(value)}")
    for key, item in value.items():
        yield str(key), item


def type_name(value: Any) -> str:
    return {
        type(None): "nothing",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
