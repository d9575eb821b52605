import threading

import pytest

from provision.errors import ConfigError, ConnectError, RemoteError
from provision.fleet import SkippedError, parse_serial, run_fleet
from provision.inventory.hosts import Host

HOSTS = [Host(name=f"b{i}", address=f"10.0.0.{i}") for i in range(10)]


def test_every_host_gets_a_value_or_an_error_in_order():
    def task(host):
        if host.name == "b3":
            raise ConnectError("b3 down")
        if host.name == "b5":
            raise RemoteError("b5 failed")
        if host.name == "b7":
            raise ValueError("bug")
        return host.name.upper()

    result = run_fleet(HOSTS, task, forks=4)
    assert [o.host.name for o in result] == [h.name for h in HOSTS]
    assert result["b0"].value == "B0"
    assert [o.host.name for o in result.unreachable] == ["b3"]
    assert [o.host.name for o in result.failed] == ["b3", "b5", "b7"]
    assert "internal error" in result["b7"].error.message and isinstance(
        result["b7"].error.__cause__, ValueError
    )


def test_forks_bound_parallelism():
    running, peak, lock = [0], [0], threading.Lock()
    together = threading.Barrier(3, timeout=30)  # passes only with three boxes running at once

    def task(host):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1

    result = run_fleet(HOSTS[:9], task, forks=3)
    assert not result.failed and peak[0] == 3


def test_serial_batches_run_one_after_another():
    order = []
    run_fleet(HOSTS[:6], lambda h: order.append(h.name), serial="50%")
    first, second = set(order[:3]), set(order[3:])
    assert first == {"b0", "b1", "b2"} and second == {"b3", "b4", "b5"}


def test_max_fail_percent_skips_later_batches():
    def task(host):
        raise RemoteError("no")

    result = run_fleet(HOSTS[:4], task, serial=1, max_fail_percent=25)
    assert [type(o.error) for o in result] == [RemoteError, RemoteError, SkippedError, SkippedError]


@pytest.mark.parametrize(
    "value, expected", [(None, 10), ("3", 3), (2, 2), ("25%", 2), ("1%", 1), ("100%", 10)]
)
def test_parse_serial(value, expected):
    assert parse_serial(value, 10) == expected


@pytest.mark.parametrize("value", ["0", "-1", "x", "0%", "150%"])
def test_parse_serial_rejects(value):
    with pytest.raises(ConfigError, match="--serial"):
        parse_serial(value, 10)
