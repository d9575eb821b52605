"""The body of the simulated memory_edit.sh (Python 3.8, standard library only; runs on the box).

Output lines, checks and exit codes follow Sophgo's memory_edit.sh v2.12; `simfit` (the simulator's
boot image format) stands in for dumpimage/dtc/mkimage.
"""

import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simfit  # noqa: E402

VERSION = "2.12"
MIB = 0x100000
SEP = "Info: " + "=" * 71
FAULTS_FILE = "/sys/firmware/sophon-sim/faults"  # only on simulated boxes
VPU_MEM = 0x8000000  # fixed 128 MiB vpu_mem region
VPU_KERNEL_MIN = 1024 * MIB  # ramoops at 0x314000000: vpu_mem placed at 512M, kernel keeps 1 GiB
VPU_HIGH_RESERVE = MIB  # v2.10+: "BM1684(X)的VPU高位需要预留1MB"
NPU_BASE = 0x24100000

USAGE = """Error: Invalid parameters. Please refer to the following example
{d}/memory_edit.sh -p [dts name] # for print infomation
{d}/memory_edit.sh -c -npu 0x80000000 -vpu 0x80000000 -vpp 0x80000000 [dts name] # for config mem, The memory size unit is Byte
{d}/memory_edit.sh -c -npu 2048 -vpu 2048 -vpp 2048 [dts name] # for config mem, The memory size unit is MiB
for bm1688, please use "memory_edit.sh -c -npu 2048 -vpu 0 -vpp 2048"
{d}/memory_edit.sh -d dtbfile # for de_emmcboot.itb
{d}/memory_edit.sh -e dtbfile # for en_emmcboot.itb
{d}/memory_edit.sh --clean # clean this dir"""


class Fail(Exception):
    """A line starting with `Error:` and exit status 255 (the script's `exit -1`)."""


class Log:
    def __init__(self, path):
        self.path = path

    def write(self, line):
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def tee(self, line):
        print(line, flush=True)
        self.write(line)


def faults():
    try:
        with open(FAULTS_FILE) as handle:
            return set(handle.read().split())
    except OSError:
        return set()


def parse_args(args):
    """('p', None, dts) or ('c', (npu, vpu, vpp) bytes, dts); None for a usage error."""
    if args and args[0] == "-p" and len(args) in (1, 2):
        return "p", None, args[1] if len(args) == 2 else None
    if not args or args[0] != "-c" or len(args) not in (7, 8) or args[1:7:2] != ["-npu", "-vpu", "-vpp"]:
        return None
    values = args[2:7:2]
    if all(re.match(r"^0x[0-9a-fA-F]+$", v) for v in values):
        sizes = tuple(int(v, 16) for v in values)
    elif all(re.match(r"^[0-9]+$", v) for v in values):
        sizes = tuple(int(v) * MIB for v in values)
    else:
        return None
    return "c", sizes, args[7] if len(args) == 8 else None


def dts_name(arg):
    if arg is None:
        for path in ("/proc/device-tree/info/file-name", "/sys/firmware/devicetree/base/info/file-name"):
            try:
                with open(path, "rb") as handle:
                    arg = handle.read().replace(b"\0", b"").decode()
                break
            except OSError:
                continue
    if not arg:
        return None
    if arg.endswith(".dtb"):
        arg = arg[: -len(".dtb")]
    return arg if arg.endswith(".dts") else arg + ".dts"


def sudo_cat(path):
    """Like the script's `sudo cat`: works as root, or when sudo needs no password; else None."""
    if os.geteuid() == 0:
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return None
    proc = subprocess.run(["sudo", "-n", "cat", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return proc.stdout.decode() if proc.returncode == 0 else None


def sudo_copy(src, dst):
    if os.geteuid() == 0:
        try:
            shutil.copyfile(src, dst)
        except OSError:
            pass
        return
    subprocess.run(["sudo", "-n", "cp", src, dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def size_line(prefix, size):
    return f"{prefix} 0x{size:x} [{size // MIB} MiB]"


def limits(image):
    """Reserved sizes (bytes) that the script adds to each heap before comparing with its ddr bank."""
    ddr12, ddr3, ddr4 = (v * MIB for v in image.ddr)
    npu_add = image.npu_reserved * MIB
    vpu_add = VPU_KERNEL_MIN + VPU_HIGH_RESERVE
    return (ddr12, ddr3, ddr4), (npu_add, vpu_add, 0)


def print_ddr_and_max(log, image):
    (ddr12, ddr3, ddr4), (npu_add, vpu_add, vpp_add) = limits(image)
    log.tee(SEP)
    log.tee("Info: get ddr information ...")
    for name, size in (("ddr12_size", ddr12), ("ddr3_size", ddr3), ("ddr4_size", ddr4)):
        log.tee(f"Info: {name} {size} Byte [{size // MIB} MiB]")
    log.tee(f"Info: ddr_size {(ddr12 + ddr3 + ddr4) // MIB} MiB")
    log.tee(SEP)
    log.tee("Info: get max memory size ...")
    for key, size in (("npu", ddr12 - npu_add), ("vpu", ddr3 - vpu_add), ("vpp", ddr4 - vpp_add)):
        log.tee(size_line(f"Info: max {key} size:", size))


def print_now(log):
    log.tee(SEP)
    log.tee("Info: get now memory size ...")
    for key in ("npu", "vpu", "vpp"):
        text = sudo_cat(f"/sys/kernel/debug/ion/bm_{key}_heap_dump/total_mem")
        size = int(text.strip()) if text and text.strip().isdigit() else 0
        log.tee(size_line(f"Info: now {key} size:", size))


def check_sizes(image, sizes):
    (ddr12, ddr3, ddr4), (npu_add, vpu_add, vpp_add) = limits(image)
    npu, vpu, vpp = sizes
    if npu + npu_add > ddr12:
        raise Fail(f"Error: npu size 0x{npu:x} error")
    if vpu > MIB and vpu + vpu_add > ddr3:
        raise Fail(f"Error: vpu size 0x{vpu:x} error")
    if vpp + vpp_add + (MIB if vpu < MIB else 0) > ddr4:
        raise Fail(f"Error: vpp size 0x{vpp:x} error")


def print_configuration(log, image, sizes):
    (_, ddr3, ddr4), _ = limits(image)
    npu, vpu, vpp = sizes
    vpu_end = ddr3 - VPU_HIGH_RESERVE
    log.tee(SEP)
    log.tee("Info: output configuration results ...")
    log.tee(size_line("Info: vpu mem area(ddr3):", VPU_MEM) + " 0x20000000 -> 0x27ffffff")
    log.tee(size_line("Info: ion npu mem area(ddr1):", npu) + f" 0x{NPU_BASE:x} -> 0x{NPU_BASE + npu - 1:x}")
    if vpu >= MIB:
        area = f" 0x{vpu_end - vpu:x} -> 0x{vpu_end - 1:x}"
        log.tee(size_line("Info: ion vpu mem area(ddr3):", vpu) + area)
    else:
        log.tee("Warning: vpu use vpp mem, so need to reserve 1M of high address space")
    log.tee(size_line("Info: ion vpp mem area(ddr4):", vpp) + f" 0x{ddr4 - vpp:x} -> 0x{ddr4 - 1:x}")
    log.tee(SEP)
    log.tee("Info: start check memory size ...")
    for key, size in zip(("npu", "vpu", "vpp"), sizes):
        log.tee(size_line(f"Info: check {key} size:", size))


def configure(log, d, image, sizes, name, active):
    check_sizes(image, sizes)
    out_dts = os.path.join(d, "output", name)
    shutil.copyfile(out_dts, out_dts + ".bak")
    print_configuration(log, image, sizes)
    if "memedit-fails" in active:
        raise Fail("Error: en_emmcfile")
    if "memedit-slow" in active:  # a real box takes tens of seconds here; tests use it to hold a run
        time.sleep(3)
    heaps = tuple(size // MIB for size in sizes)
    if "itb-wrong-layout" in active:  # the image boots, but not with what was asked (and checked)
        heaps = tuple(max(1, mib // 2) for mib in heaps)
    new = image._replace(heaps=heaps)
    raw = simfit.encode(new)
    if "itb-corrupt" in active:
        raw = raw[:-32] + bytes(b ^ 0xFF for b in raw[-32:])
    with open(os.path.join(d, "output", "emmcboot.itb"), "wb") as handle:
        handle.write(raw)
    log.tee("Info: check edit size ok")
    log.tee("Info: en_emmcfile ok")
    shutil.copyfile(os.path.join(d, "output", "emmcboot.itb"), os.path.join(d, "emmcboot.itb"))
    sudo_copy("/boot/emmcboot.itb", "/boot/emmcboot.itb.memeditBak")
    os.sync()
    print("Please reboot the device after running this command for the changes to take effect:")
    print(f"sudo cp {d}/emmcboot.itb /boot/emmcboot.itb && sync")


def unpack(log, d):
    """Copy the boot files here and "de_emmcfile" them (errors go to the log, like the real script)."""
    if not os.path.exists("/boot/emmcboot.itb"):
        raise Fail("Error: cannot find boot file")
    shutil.copyfile("/boot/emmcboot.itb", os.path.join(d, "emmcboot.itb"))
    shutil.copyfile("/boot/multi.its", os.path.join(d, "multi.its"))
    try:
        with open(os.path.join(d, "emmcboot.itb"), "rb") as handle:
            image = simfit.decode(handle.read())
    except simfit.InvalidImage as exc:
        log.write(f"Error: itb file cannot be unpacked: {exc}")
        raise Fail("Error: de_emmcfile")
    os.makedirs(os.path.join(d, "output"), exist_ok=True)
    return image


def main(argv):
    d, log = argv[1], Log(argv[2])
    log.tee("INFO: version: " + VERSION)
    parsed = parse_args(argv[3:])
    if parsed is None:
        print(USAGE.format(d=d))
        return 255
    mode, sizes, dts_arg = parsed
    try:
        image = unpack(log, d)
        name = dts_name(dts_arg)
        if not name:
            raise Fail("Error: cannot find used dts file on bm1684")
        with open(os.path.join(d, "output", name), "w") as handle:
            handle.write("/* {} */\n/ {{ heaps = <{} {} {}>; }};\n".format(image.dts, *image.heaps))
        log.tee(f"Info: use dts file {d}/output/{name}")
        log.write("Info: chip is bm1684x" if "bm1684x" in name else "Info: chip is bm1684")
        print_ddr_and_max(log, image)
        if mode == "p":
            print_now(log)
        else:
            configure(log, d, image, sizes, name, faults())
    except Fail as exc:
        log.tee(str(exc))
        return 255
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
