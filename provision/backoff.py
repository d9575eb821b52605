"""The one retry policy: exponential backoff with a cap and jitter (ansible's reboot, AWS's advice).

The wait before retry `attempt` (1, 2, ...) is `first * 2**(attempt-1)`, capped at `cap`, times a random
factor in [0.5, 1]: a fleet that failed together does not retry in lockstep.
"""

from __future__ import annotations

import random

DEFAULT_CAP = 10.0


def backoff_delay(
    attempt: int, first: float, cap: float = DEFAULT_CAP, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry `attempt` (1-based)."""
    ceiling = min(cap, first * 2 ** max(0, attempt - 1))
    return ceiling * (rng or random).uniform(0.5, 1.0)
