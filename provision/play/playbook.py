"""Playbooks: YAML fleet recipes, checked completely at load time (unknown keys, wrong types → file:line:key).

    name: ChatGLM4-9B, best variant per box
    model: glm4-9b        # optional: default play's --model (SOPHON_FLEET_MODEL, else glm4-9b)
    serial: 1                # or "25%": rolling batches for steps that reboot
    max_fail_percent: 0
    steps:
      - preflight: {variant: auto}
      - memory: {when: nothing-fits}
      - assets: {variant: auto}
      - deploy: {}
      - bench: {runs: 1}
      - chat-check: {prompt: 你好}
      - serve: {}              # the OpenAI-compatible API as sophon-chat.service

A step is a one-key mapping `{kind: options}`; `options` may be empty. Running a playbook is in
`provision/play/run.py`; this module only describes and validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.errors import ConfigError
from provision.manifest import Manifest
from provision.memory.reboot import DEFAULT_REBOOT_TIMEOUT
from provision.yamlfile import KeyPath, Located, load_yaml, type_name


@dataclass(frozen=True)
class Option:
    """One option of a step: its type, default and (for text) allowed values."""

    kind: type | tuple[type, ...]
    default: Any = None
    choices: tuple[str, ...] = ()

    def check(self, doc: Located, path: KeyPath, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(type_name(k()) for k in kinds)
            raise doc.error(path, f"must be {names}, not {type_name(value)}")
        if self.choices and value not in self.choices:
            raise doc.error(path, f"must be one of {', '.join(self.choices)}, not {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise doc.error(path, "must not be negative")
        return value


# `variant` options are `auto` or a variant of the manifest: checked by check_variants once it is known
STEPS: dict[str, dict[str, Option]] = {
    "preflight": {"variant": Option(str, "auto")},
    "memory": {
        "variant": Option(str, "auto"),
        # nothing-fits: change the layout only where no variant fits as the box is (the auto playbook)
        "when": Option(str, "needed", ("needed", "nothing-fits")),
        "npu": Option(int),
        "vpu": Option(int),
        "vpp": Option(int),
        "auto_rollback": Option(bool, True),
        "reboot_timeout": Option(int, int(DEFAULT_REBOOT_TIMEOUT)),
    },
    "assets": {
        "variant": Option(str, "auto"),
        "from_mirror": Option(str),
        "reverify": Option(bool, False),
    },
    "deploy": {"keep": Option(int, 3)},
    "bench": {
        "runs": Option(int, 1),
        "prompt": Option(str),
        "max_new_tokens": Option(int, 128),
        "chart": Option(str),
    },
    "chat-check": {"prompt": Option(str, "你好"), "max_new_tokens": Option(int, 32)},
    "serve": {"variant": Option(str, "auto")},  # sophon-chat.service up and ready
}

TOP: dict[str, Option] = {
    "name": Option(str, ""),
    "model": Option(str),  # None: the command's --model (SOPHON_FLEET_MODEL, else glm4-9b)
    "serial": Option((int, str)),
    "max_fail_percent": Option(int, 100),
    "forks": Option(int, 16),
    "steps": Option(list),
}


@dataclass(frozen=True)
class Step:
    kind: str
    options: dict[str, Any]
    line: int | None


@dataclass(frozen=True)
class Playbook:
    file: str
    name: str
    model: str | None
    serial: int | str | None
    max_fail_percent: int
    forks: int
    steps: tuple[Step, ...] = field(default_factory=tuple)


def check_variants(playbook: Playbook, manifest: Manifest) -> None:
    """Every step's `variant` is `auto` or one of the manifest's (checked once the model is known).

    Raises:
        ConfigError: naming the playbook's file, the step's line and the variants the manifest has.
    """
    for i, step in enumerate(playbook.steps):
        variant = step.options.get("variant", "auto")
        if variant != "auto" and variant not in manifest.variants:
            raise ConfigError(
                f"unknown variant {variant!r} (model {manifest.model} has: {', '.join(manifest.variants)})",
                file=playbook.file,
                line=step.line,
                key=f"steps[{i}].{step.kind}.variant",
            )


def load_playbook(path: Path | str) -> Playbook:
    """Load and validate a playbook; every problem is a ConfigError naming file, line and key."""
    return parse_playbook(load_yaml(path))


def parse_playbook(doc: Located) -> Playbook:
    if not isinstance(doc.data, dict):
        raise doc.error((), "a playbook must be a mapping with `steps:`")
    top = _options(doc, (), doc.data, TOP)
    if not top["steps"]:
        raise doc.error(("steps",), "is required and must list at least one step")
    serial = top["serial"]
    if isinstance(serial, str) and not (serial.endswith("%") and serial[:-1].isdigit()):
        raise doc.error(("serial",), f"must be a number of boxes or a percentage like 25%, not {serial!r}")
    if top["max_fail_percent"] > 100:
        raise doc.error(("max_fail_percent",), "must be between 0 and 100")
    steps = tuple(_step(doc, ("steps", i), item) for i, item in enumerate(top["steps"]))
    return Playbook(doc.file, top["name"], top["model"], serial, top["max_fail_percent"], top["forks"], steps)


def _step(doc: Located, path: KeyPath, item: Any) -> Step:
    if isinstance(item, str):
        item = {item: None}
    if not isinstance(item, dict) or len(item) != 1:
        raise doc.error(path, f"a step is one `kind: {{options}}` mapping; kinds: {', '.join(STEPS)}")
    ((kind, options),) = item.items()
    if kind not in STEPS:
        raise doc.error((*path, kind), f"unknown step (known: {', '.join(STEPS)})")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise doc.error((*path, kind), f"options must be a mapping, not {type_name(options)}")
    values = _options(doc, (*path, kind), options, STEPS[kind])
    layout = [values[k] for k in ("npu", "vpu", "vpp")] if kind == "memory" else []
    if any(v is not None for v in layout) and not all(v is not None for v in layout):
        raise doc.error((*path, kind), "give npu, vpu and vpp together (MiB), or none of them")
    return Step(kind, values, doc.line_of(path))


def _options(doc: Located, path: KeyPath, given: dict[str, Any], schema: dict[str, Option]) -> dict[str, Any]:
    for key in given:
        if key not in schema:
            raise doc.error((*path, key), f"unknown key (expected one of: {', '.join(schema)})")
    values = {}
    for key, option in schema.items():
        value = given.get(key)
        values[key] = option.default if value is None else option.check(doc, (*path, key), value)
    return values
