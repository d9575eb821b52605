"""A box's runtime and service logs, in one round trip: the deploy history, the live runtime's deploy
marker (its selftest), the chat service's journal (systemd), and sophon-fleet's log files on the box."""

from __future__ import annotations

from provision.boxpaths import RUNTIME_DIR, RUNTIME_LINK, WORK_DIR
from provision.ssh.transport import Transport

MARK = "@@sophon-fleet-log:"
SERVICE = "sophon-chat.service"
LOG_DIR = f"{WORK_DIR}/logs"  # where a service may keep its own log files


def logs_script(lines: int) -> str:
    n = int(lines)
    return (
        f"echo '{MARK}deploy history'; tail -n {n} {RUNTIME_DIR}/history 2>/dev/null; "
        f"echo '{MARK}live runtime'; cat {RUNTIME_LINK}/.deployed 2>/dev/null; "
        f"echo '{MARK}{SERVICE}'; if command -v journalctl >/dev/null; then "
        f"journalctl -u {SERVICE} -n {n} --no-pager -q 2>&1; else echo 'no systemd journal on this box'; fi; "
        f'for f in {LOG_DIR}/*.log; do [ -f "$f" ] || continue; echo "{MARK}$f"; tail -n {n} "$f"; done; true'
    )


def box_logs(transport: Transport, lines: int = 50) -> dict[str, str]:
    """Section name -> text (the last `lines` lines of each). Raises ConnectError, RemoteError."""
    return split_logs(transport.run(logs_script(lines), timeout=60).stdout)


def split_logs(output: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARK):
            current = sections.setdefault(line[len(MARK) :], [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(body) for name, body in sections.items()}
