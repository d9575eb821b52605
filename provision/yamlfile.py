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


def load_yaml(path: Path | str) -> Located:
    """Parse a YAML file; syntax errors and duplicate keys become ConfigError with file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str) -> Located:
    try:
        node = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file, line=line) from exc
    lines: dict[KeyPath, int] = {}
    data = _convert(node, (), lines, file) if node is not None else None
    return Located(file=file, data=data, lines=lines)


def _convert(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in result:
                line = key_node.start_mark.line + 1
                raise ConfigError("duplicate key", file=file, line=line, key=dotted((*path, key)))
            lines[tuple((*path, key))] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, (*path, key), lines, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node)


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
