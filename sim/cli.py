"""`sophon-fleet sim ...`: a simulated fleet of BM1684X boxes (root; Linux namespaces)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from provision.cli.errors import reports_errors
from provision.cli.options import json_option
from provision.cli.output import Output, plural
from provision.errors import SimError
from provision.settings import load_settings
from sim.fleet import FAULTS, Fleet, describe
from sim.profiles import PROFILES, parse_profile_spec

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the fleet keeps its state [default: $SOPHON_FLEET_SIM_DIR or /run/sophon-fleet-sim].",
)


def _state_dir(value: Path | None) -> Path:
    return value or load_settings().sim_dir


@click.group()
def sim() -> None:
    """Simulated BM1684X boxes to build, test and rehearse on.

    \b
    Each box is a set of Linux namespaces booting real systemd (sshd a unit) on its own address
    (10.213.K.0/24, reachable only from this machine), its own /boot, /data, /opt/sophon, heaps,
    boot_id and reboots. Needs root.

    \b
    Examples:
      sophon-fleet sim up --boxes 3
      sophon-fleet sim up --profile se7-small:1,se7-ready-int8:1,se7-int4-only:1
      sophon-fleet sim status --json
      sophon-fleet sim reboot se7-1
      sophon-fleet sim fault se7-2 rate 100
      sophon-fleet sim down
    """


@sim.command()
@click.option(
    "--boxes", "-n", type=click.IntRange(1, 200), default=None, help="Number of boxes [default: 3]."
)
@click.option(
    "--profile",
    default="se7-factory",
    show_default=True,
    help=f"Profile, or a mix NAME:COUNT,... Profiles: {', '.join(PROFILES)}.",
)
@click.option(
    "--mirror/--no-mirror",
    default=True,
    show_default=True,
    help="Also run the mirror node (HTTP + SFTP with the stand-in assets and the memory_edit kit).",
)
@click.option(
    "--bmodel-size", type=int, default=0, help="Pad the mirror's stand-in bmodels to this many bytes."
)
@click.option(
    "--engine",
    type=click.Choice(["emulator", "cmodel"]),
    default="emulator",
    show_default=True,
    help="The boxes' sophon.sail: the numpy emulator (fast), or the vendor's libbmrt on the BM1684X cmodel "
    "with real compiled bmodels (the first time per machine: tpu-mlir install and compile, minutes).",
)
@state_dir_option
@json_option
@click.pass_obj
@reports_errors
def up(
    out: Output,
    boxes: int | None,
    profile: str,
    mirror: bool,
    bmodel_size: int,
    engine: str,
    state_dir: Path | None,
) -> None:
    """Bring a simulated fleet up and print its inventory.

    \b
    Examples:
      sophon-fleet sim up --boxes 16
      sophon-fleet sim up --profile se7-small:1,se7-ready-int8:1 --state-dir /tmp/fleet
      sophon-fleet sim up --boxes 1 --engine cmodel   # the vendor runtime, real compiled bmodels
      sophon-fleet preflight -i /run/sophon-fleet-sim/inventory.yml
    """
    profiles = parse_profile_spec(profile, boxes if boxes is not None or ":" in profile else 3)
    started = time.monotonic()
    out.info(f"bringing up {plural(len(profiles), 'simulated box')} ...")
    fleet = Fleet.up(_state_dir(state_dir), profiles, mirror=mirror, bmodel_size=bmodel_size, engine=engine)
    elapsed = time.monotonic() - started
    if fleet.state.python_version != "3.8":
        out.warn(
            f"the boxes run Python {fleet.state.python_version}, not 3.8 like a real SE7: this machine has "
            "no CPython 3.8 (pyenv install 3.8, or set SOPHON_FLEET_SIM_PYTHON)"
        )
    extra = {"mirror": fleet.mirror_url, "manifest": str(fleet.manifest_path)} if fleet.mirror else {}
    if out.json:
        out.emit_json(
            {
                **extra,
                "state_dir": str(fleet.state.dir),
                "inventory": str(fleet.inventory_path),
                "seconds": round(elapsed, 3),
                "boxes": [describe(v) for v in fleet.status() if v.role == "box"],
            }
        )
        return
    out.info(
        f"{plural(len(profiles), 'box')} answering SSH after {elapsed:.2f} s; "
        f"inventory: {fleet.inventory_path}"
    )
    if fleet.mirror:
        out.info(
            f"mirror: {fleet.mirror_url} (and sftp://open@{fleet.mirror.address}); "
            f"manifest pinned to its stand-ins: {fleet.manifest_path} (the inventory names it)\n"
            f"try: sophon-fleet preflight -i {fleet.inventory_path}"
        )
    out.text(fleet.inventory_path.read_text())


@sim.command()
@state_dir_option
@json_option
@click.pass_obj
@reports_errors
def status(out: Output, state_dir: Path | None) -> None:
    """Show every box: address, profile, power state, heaps, boot id, faults.

    \b
    Examples:
      sophon-fleet sim status
      sophon-fleet sim status --json | jq '.boxes[].state'
    """
    fleet = Fleet.load(_state_dir(state_dir))
    views = fleet.status()
    if out.json:
        out.emit_json(
            {
                "state_dir": str(fleet.state.dir),
                "inventory": str(fleet.inventory_path),
                "boxes": [describe(v) for v in views if v.role == "box"],
                "mirror": next((describe(v) for v in views if v.role == "mirror"), None),
            }
        )
        return
    out.table(
        f"simulated fleet in {fleet.state.dir}",
        ["box", "address", "profile", "state", "heaps MiB", "boot", "faults"],
        [
            (
                v.name,
                v.address,
                v.profile,
                f"{v.state} ({v.detail})",
                "/".join(map(str, v.heaps)),
                f"#{v.boot_count} {v.boot_id}",
                ", ".join(v.faults) or "-",
            )
            for v in views
        ],
    )


@sim.command()
@state_dir_option
@json_option
@click.pass_obj
@reports_errors
def down(out: Output, state_dir: Path | None) -> None:
    """Remove the fleet: processes, namespaces, links, the safety route, mounts and state.

    Works after a crash of the simulator too: the state directory records what was made.

    \b
    Examples:
      sophon-fleet sim down
      sophon-fleet sim down --state-dir /tmp/fleet
    """
    directory = _state_dir(state_dir)
    started = time.monotonic()
    if not (directory / "fleet.json").exists():
        out.info(f"no simulated fleet in {directory}: nothing to remove")
        return
    left = Fleet.load(directory).down()
    if out.json:
        out.emit_json(
            {"state_dir": str(directory), "left": left, "seconds": round(time.monotonic() - started, 3)}
        )
    if left:
        raise SimError(
            "could not remove: " + "; ".join(left), hint="run `sophon-fleet sim down` again as root"
        )
    out.info(f"fleet in {directory} removed ({time.monotonic() - started:.2f} s)")


@sim.command()
@click.argument("box")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the new boot.")
@state_dir_option
@json_option
@click.pass_obj
@reports_errors
def reboot(out: Output, box: str, no_wait: bool, state_dir: Path | None) -> None:
    """Power-cycle BOX (every session drops; it boots /boot/emmcboot.itb).

    \b
    Examples:
      sophon-fleet sim reboot se7-1
    """
    boot_id = Fleet.load(_state_dir(state_dir)).reboot(box, wait=not no_wait)
    if out.json:
        out.emit_json({"box": box, "waited": not no_wait, "boot_id": None if no_wait else boot_id})
        return
    out.info(f"{box}: reboot requested" if no_wait else f"{box}: up again, boot_id {boot_id}")


@sim.command()
@click.argument("box")
@click.argument("fault", type=click.Choice(FAULTS))
@click.argument("arg", required=False)
@state_dir_option
@json_option
@click.pass_obj
@reports_errors
def fault(out: Output, box: str, fault: str, arg: str | None, state_dir: Path | None) -> None:
    """Inject FAULT into BOX (`heal` clears them all).

    \b
    Faults:
      dark           the box never comes back from its next reboot (until heal)
      slow-boot S    reboots take S seconds
      link-down      cut the box's network link (link-up restores it)
      rate MBIT      limit the box's link with tbf (0 removes the limit)
      disk-full      fill /data
      old-sdk        libsophon 0.4.9 / SDK V23.07.01
      no-sail        `import sophon.sail` fails
      wrong-chip     a BM1684 (another board, so another boot_id) instead of a BM1684X
      slow-tpu MS    every SAIL graph run on the box takes MS milliseconds more (0 removes it)
      memedit-fails  memory_edit.sh -c fails (`Error: en_emmcfile`)
      itb-corrupt    memory_edit.sh -c writes an image the box cannot boot
      itb-wrong-layout  memory_edit.sh -c reports the requested sizes but writes half of them
      boot-heaps-short  the next boot registers half of each heap its image holds (once)
      memedit-slow   memory_edit.sh -c takes 3 s more (holds a run in its edit stage)
      heal           clear every fault (a box with an unbootable image gets a factory image back)

    \b
    Examples:
      sophon-fleet sim fault se7-2 rate 100
      sophon-fleet sim fault se7-3 dark && sophon-fleet sim reboot se7-3 --no-wait
      sophon-fleet sim fault se7-3 heal
    """
    fleet = Fleet.load(_state_dir(state_dir))
    said = fleet.fault(box, fault, arg)
    if out.json:
        faults = next((v.faults for v in fleet.status() if v.name == box), [])
        out.emit_json({"box": box, "fault": fault, "arg": arg, "result": said, "faults": faults})
        return
    out.info(said)
