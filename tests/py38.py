"""CPython 3.8, the boxes' Python: where this machine has it, and what a test does when it has not.

Under CI (`CI=true`) a missing 3.8 fails the tests that need it: a green run must have proven `chat/` and the
box-side scripts on 3.8. On a developer's machine without it they are skipped, saying why.
"""

from __future__ import annotations

import os
import sys

import pytest

from sim.box import PY38_CANDIDATES

PY38: str | None = next((p for p in PY38_CANDIDATES if os.access(p, os.X_OK)), None)


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: the Python 3.8 checks must run)")
    pytest.skip(reason)


def need_py38() -> str:
    """The path of CPython 3.8."""
    if PY38 is None:
        unavailable(f"CPython 3.8 not found at any of {', '.join(PY38_CANDIDATES)}")
    assert PY38 is not None
    return PY38


def box_python_version() -> str:
    """What a simulated box runs as python3: 3.8 wherever this machine has it (and always under CI)."""
    if PY38 is not None or under_ci():
        return "3.8"
    return f"{sys.version_info[0]}.{sys.version_info[1]}"
