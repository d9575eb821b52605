"""What sudo's refusal means: a wrong password, no password at all, or a user who may not use sudo.

sudo says the same "no password was provided" when `-S` reads a wrong password and then EOF, so the
"Sorry, try again" / "incorrect password attempt" lines decide. One classification for every caller: the
transport, the probe's root part, the reboot request and the memory kit's runs.
"""

from __future__ import annotations

from enum import Enum

from provision.errors import SudoError


class SudoRefusal(str, Enum):
    WRONG_PASSWORD = "wrong-password"
    NO_PASSWORD = "no-password"
    NOT_ALLOWED = "not-allowed"


_MARKERS: tuple[tuple[SudoRefusal, tuple[str, ...]], ...] = (
    (SudoRefusal.WRONG_PASSWORD, ("incorrect password", "Sorry, try again")),
    (SudoRefusal.NOT_ALLOWED, ("is not in the sudoers", "is not allowed to run sudo")),
    (SudoRefusal.NO_PASSWORD, ("no password was provided", "a password is required")),
)

MESSAGES = {
    SudoRefusal.WRONG_PASSWORD: "sudo refused this password",
    SudoRefusal.NO_PASSWORD: "sudo needs a password and none was given",
    SudoRefusal.NOT_ALLOWED: "this user may not use sudo",
}
HINTS = {
    SudoRefusal.WRONG_PASSWORD: "check the password the inventory names (become_password_env / "
    "become_password_file), or type it again with -K",
    SudoRefusal.NO_PASSWORD: "give become_password_env / become_password_file in the inventory, or -K to be "
    "asked once",
    SudoRefusal.NOT_ALLOWED: "log in as a user of the sudo group (`user:` in the inventory)",
}


def classify(text: str) -> SudoRefusal | None:
    """The refusal sudo's output shows, if any (a wrong password wins over "no password")."""
    for refusal, markers in _MARKERS:
        if any(marker in text for marker in markers):
            return refusal
    return None


def describe(refusal: SudoRefusal) -> str:
    """`sudo refused this password: <hint>` — one line for facts and verdicts."""
    return f"{MESSAGES[refusal]}: {HINTS[refusal]}"


def sudo_error(host: str, text: str, *, doing: str = "") -> SudoError | None:
    """The SudoError for sudo's output `text` (None when it shows no refusal)."""
    refusal = classify(text)
    if refusal is None:
        return None
    what = f" ({doing})" if doing else ""
    return SudoError(f"{host}: {MESSAGES[refusal]}{what}", refusal=refusal.value, hint=HINTS[refusal])
