"""How `memory apply` turns per-box outcomes into an exit code and recovery text (pure, no SSH)."""

import pytest

from provision.cli.errors import Exit
from provision.cli.memory_view import results_exit, results_json
from provision.errors import ConnectError, FleetError
from provision.fleet import FleetResult, HostOutcome, SkippedError
from provision.inventory.hosts import Host
from provision.memory.apply import ApplyFailed, BoxResult, Stage, Status, recovery_steps
from provision.memory.bootimage import Backup
from provision.memory.layout import Layout

OLD = Layout(3950, 2048, 3072)
NEW = Layout(7615, 3071, 3071)
BACKUP = Backup(
    "/data/sophon-fleet/backups/emmcboot.itb.20261125T180000Z", "ab" * 32, OLD, "20261125T180000Z"
)


def outcome(name, value=None, error=None):
    return HostOutcome(Host(name, "10.0.0.1"), value, error, 1.0)


def applied(name):
    return outcome(name, BoxResult(name, Status.APPLIED, OLD, NEW, backup=BACKUP))


def failed(name, **kw):
    return outcome(name, error=ApplyFailed(f"{name}: x", host=name, stage=Stage.EDIT, image="old", **kw))


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        ([applied("a"), applied("b")], Exit.OK),
        ([applied("a"), failed("b", refused=True)], Exit.NOT_READY),
        ([applied("a"), outcome("b", error=ConnectError("b: refused"))], Exit.UNREACHABLE),
        ([failed("a", refused=True), outcome("b", error=ConnectError("b: refused"))], Exit.UNREACHABLE),
        ([failed("a"), outcome("b", error=ConnectError("b: refused"))], Exit.FAILED),
        ([failed("a"), outcome("b", error=SkippedError("skipped"))], Exit.FAILED),
        ([applied("a"), outcome("b", error=FleetError("bug"))], Exit.FAILED),
        ([failed("a", cancelled=True), failed("b")], Exit.INTERRUPTED),
    ],
)
def test_exit_code_is_the_worst_outcome(outcomes, code):
    assert results_exit(FleetResult(tuple(outcomes))) == code


def test_json_names_result_stage_image_and_recovery():
    error = ApplyFailed(
        "a: did not come back",
        host="a",
        stage=Stage.WAITING,
        image="new",
        backup=BACKUP,
        recovery=recovery_steps("a", "new", BACKUP, rebooted=True),
    )
    doc = results_json("memory apply", FleetResult((outcome("a", error=error), applied("b"))))
    a, b = doc["hosts"]
    assert (a["result"], a["stage"], a["image"]) == ("failed", "waiting", "new")
    assert a["backup"]["path"] == BACKUP.path and a["backup"]["layout"] == [3950, 2048, 3072]
    after = {"npu": 7615, "vpu": 3071, "vpp": 3071, "total": 13757, "usable": 10686}
    assert b["result"] == "applied" and b["after"] == after


def test_recovery_text_after_a_reboot_names_the_backup_and_the_manual_copy():
    text = "\n".join(recovery_steps("se7-3", "new", BACKUP, rebooted=True))
    assert BACKUP.path in text and BACKUP.sha256 in text and "emmcboot.itb.memeditBak" in text
    assert "memory rollback se7-3 --break-lock" in text
    assert "cp <data>/sophon-fleet/backups/emmcboot.itb.20261125T180000Z <boot>/emmcboot.itb" in text
    assert recovery_steps("se7-3", "old", BACKUP, rebooted=False) == ()
    assert "memory rollback se7-3" in "\n".join(recovery_steps("se7-3", "new", BACKUP, rebooted=False))
