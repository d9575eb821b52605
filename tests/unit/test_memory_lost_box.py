"""`memory apply` on a box that stops answering before it changed anything, on a scripted transport (any
command it was not told about fails the test): the report names the lock only when it may be on the box."""

import re

import pytest

from provision.errors import ApplyFailed, UnreachableError
from provision.memory.apply import ApplyOptions, apply_box
from provision.memory.layout import Layout
from provision.memory.plan import Action, BoxMemory, BoxPlan, Request
from tests.fakes import Reply, ScriptedTransport

NOW, TARGET = Layout(3950, 2048, 3072), Layout(7615, 3071, 3071)
LOCK = "/data/sophon-fleet/locks/memory.lock"


class SudoCutOff(ScriptedTransport):
    """A box whose link dies at the sudo check, before the lock is tried."""

    def check_sudo(self) -> None:
        raise UnreachableError("se7-1: connection lost during `sudo true`")


def apply(transport):
    plan = BoxPlan("se7-1", Action.APPLY, NOW, TARGET, TARGET, "")
    box = BoxMemory("se7-1", NOW, TARGET, kit_path="/opt/sophon/memory_edit/memory_edit.sh")
    options = ApplyOptions(reach_args=("-i", "hosts.yml"), apply_args=("--yes",))
    with pytest.raises(ApplyFailed) as caught:
        apply_box(transport, plan, Request(TARGET, True), box, options, progress=lambda *a: None)
    return caught.value


def test_cut_off_while_taking_the_lock_names_it_with_the_command_that_removes_it():
    failed = apply(ScriptedTransport([Reply(re.escape(f"mkdir -- {LOCK}"), raises=UnreachableError("cut"))]))
    assert failed.unreachable and failed.image == "old" and "untouched" in failed.message
    (advice,) = [step for step in failed.recovery if "--break-lock" in step]
    assert f"the lock {LOCK} this run was taking may be on it" in advice
    assert "`sophon-fleet memory apply --yes --limit se7-1 --break-lock -i hosts.yml`" in advice


def test_cut_off_before_the_lock_was_tried_says_nothing_of_a_lock():
    failed = apply(SudoCutOff([]))
    assert failed.unreachable and failed.image == "old" and failed.recovery == ()
