"""`sophon-fleet inventory`: the resolved hosts, secrets masked."""

from __future__ import annotations

from typing import Any

import click

from provision.cli.errors import reports_errors
from provision.cli.hosts import host_options, reach_from, resolve_inventory
from provision.cli.options import json_option
from provision.cli.output import Output

SCHEMA = "sophon-fleet/inventory/v1"


@click.command("inventory")
@host_options
@json_option
@click.pass_obj
@reports_errors
def inventory(out: Output, **kwargs: Any) -> None:
    """Show the hosts the other commands would work on (secrets masked; nothing connects).

    \b
    Examples:
      sophon-fleet inventory -i /run/sophon-fleet-sim/inventory.yml
      sophon-fleet inventory -i hosts.ini --limit 'se7:!lab' --json
      sophon-fleet inventory -H linaro@10.0.0.5:22,se7-02
    """
    inv = resolve_inventory(reach_from(kwargs))
    if out.json:
        out.emit_json(
            {"schema": SCHEMA, "hosts": [h.public() for h in inv.hosts], "groups": dict(inv.groups)}
        )
        return
    rows = [
        (
            h.name,
            h.target,
            ",".join(h.groups) or "-",
            h.variant or "auto",
            _auth(h.public()),
            h.public()["become_password"] or "-",
            h.proxy_jump or "-",
            h.source,
        )
        for h in inv.hosts
    ]
    out.table(None, ["host", "target", "groups", "variant", "auth", "sudo", "jump", "from"], rows)


def _auth(public: dict[str, Any]) -> str:
    parts = [f"key:{k}" for k in public["keys"]]
    if public["password"]:
        parts.append(f"password:{public['password']}")
    return " ".join(parts) or "agent/default keys"
