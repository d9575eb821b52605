"""Ansible-style reboot: backoff with jitter and a cap, the dropped connection tolerated, explicit timeout.
A scripted transport raises on any command it was not told about."""

import random
import threading

import pytest

from provision.errors import ConnectError, RemoteError
from provision.memory.reboot import (
    BOOT_ID,
    Cancelled,
    RebootPolicy,
    RebootTimeout,
    request_reboot,
    wait_for_new_boot,
)
from provision.ssh.transport import Result
from tests.fakes import Reply, ScriptedTransport, exactly


def Scripted(script, reconnects=()):
    """The scripted transport, in order: (the exact command, its Result or the exception it raises)."""
    replies = [
        Reply(exactly(command), raises=reply)
        if isinstance(reply, BaseException)
        else Reply(exactly(command), reply.stdout, reply.stderr, reply.exit_code)
        for command, reply in script
    ]
    return ScriptedTransport(replies, ordered=True, reconnects=list(reconnects))


def ok(stdout="", code=0, stderr=""):
    return Result("cmd", code, stdout, stderr, 0.0)


FAST = RebootPolicy(timeout=5, first_poll=0.001, cap=0.004, command_timeout=1)


def test_delays_back_off_exponentially_with_jitter_and_a_cap():
    policy = RebootPolicy(first_poll=1, cap=8)
    next_delay = policy.delays(random.Random(4))
    delays = [next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_waits_through_the_drop_and_the_old_boot_until_a_new_boot_id_and_readiness():
    box = Scripted(
        [
            (f"cat {BOOT_ID}", ok("old\n")),  # the reboot has not started yet
            (f"cat {BOOT_ID}", ok("new\n")),
            ("whoami", ok("linaro\n")),
        ],
        reconnects=[ConnectError("refused"), ConnectError("refused"), None, None],
    )
    polls = []
    assert wait_for_new_boot(box, "old", FAST, on_poll=lambda n, why: polls.append(why)) == "new"
    assert polls == [
        "unreachable: refused",
        "unreachable: refused",
        "still the old boot (the reboot has not started yet)",
    ]
    assert box.replies == []


def test_timeout_is_explicit_and_says_what_was_seen_last():
    times = iter([0.0, 0.0, 1.0, 2.0, 6.0, 6.0])
    box = Scripted([], reconnects=[ConnectError("no route to host")] * 5)
    with pytest.raises(RebootTimeout) as caught:
        wait_for_new_boot(box, "old", FAST, clock=lambda: next(times))
    assert "did not come back within 5 s" in caught.value.message
    assert "no route to host" in caught.value.message
    assert "memory rollback se7-1" in caught.value.hint


def test_cancel_stops_the_wait():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        wait_for_new_boot(Scripted([]), "old", FAST, cancel=cancel)


@pytest.mark.parametrize("reply", [ok(code=-1), ConnectError("connection lost"), RemoteError("timed out")])
def test_a_dropped_connection_after_reboot_is_expected(reply):
    box = Scripted([("reboot", reply)])
    request_reboot(box)
    assert box.closed == 1


def test_sudo_refusing_the_reboot_is_an_error():
    box = Scripted([("reboot", ok(code=1, stderr="sudo: 1 incorrect password attempt"))])
    with pytest.raises(RemoteError, match="sudo refused"):
        request_reboot(box)
