"""The box side of `gather`: ONE shell script per box (one round trip) printing every fact in marked sections.

Cheap by design, because a fleet's probes share the controller's round trip budget (and the sim's boxes share
its CPU): live facts (hostname, disk, assets, runtime, ...) are read with shell builtins where they can be;
facts that only change with a reboot, a package, the boot image or the kit (uname, dts, `bm_version`, the
`import sophon.sail` result, and the root part: ion heaps and `memory_edit.sh -p`) are kept on the box in
`~/.cache/sophon-fleet/` under a key of the boot_id and the identity (inode, size, mtime) of the files they
depend on, and replayed while the key holds. Only successes are kept (sudo refused, heaps unreadable or
sail failing are asked again every time); `fresh=True` (doctor, `preflight --fresh`) asks everything again.
"""

from __future__ import annotations

from provision.boxpaths import (
    BOOT_IMAGE,
    KIT_PATHS,
    LIBSOPHON_LINK,
    MODELS_DIR,
    RUNTIME_LINK,
    VERIFIED_MARKER,
)
from provision.ssh.transport import quote_command

MARK = "@@sophon-fleet:"
DISKS = ("/", "/data", "/boot")
TOOL_OUTPUT_BYTES = 65536  # a vendor tool's output kept by the probe (bm_version prints ~600 bytes)
BOX_CACHE = "$HOME/.cache/sophon-fleet/facts-box"  # 1st line: the sail module file the kept import found
ROOT_CACHE = "$HOME/.cache/sophon-fleet/facts-root"

_PYTHON = """import sys
print("python %d.%d.%d" % sys.version_info[:3])
try:
    import sophon.sail as sail
    print("sail ok")
    print("path %s" % getattr(sail, "__file__", "-"))
except BaseException as e:
    print("sail error %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
"""

_ROOT = (
    "for k in npu vpu vpp; do d=/sys/kernel/debug/ion/bm_${k}_heap_dump; "
    '{ read -r v < "$d/total_mem"; } 2>/dev/null && echo "$k $v" '
    '|| { [ -d /sys/kernel/debug/ion ] && [ ! -e "$d" ] && echo "$k absent"; } || echo "$k ?"; done; '
    f'if [ -n "$1" ]; then echo "{MARK}memory_edit_p"; cd "$(dirname "$1")" && ./memory_edit.sh -p 2>&1; fi'
)

# replay CACHE KEY NAME: print what CACHE keeps when its key (2nd line) is KEY, and NAME in the `replayed`
# section; keep CACHE FIRST KEY: store $out
_CACHE_FUNCTIONS = rf"""nl='
'
replay() {{
  [ -z "$fresh" ] && [ -n "$b" ] && [ -r "$1" ] || return 1
  {{ read -r _ && IFS= read -r l && [ "$l" = "$2" ] \
    && while IFS= read -r l; do printf '%s\n' "$l"; done; }} < "$1" \
    && printf '\n%s\n%s\n' '{MARK}replayed' "$3"
}}
keep() {{
  [ -n "$b" ] || return 0
  {{ mkdir -p "${{1%/*}}" && printf '%s\n%s\n%s\n' "$2" "$3" "$out" > "$1.$$" \
    && mv -f "$1.$$" "$1"; }} 2>/dev/null || rm -f "$1.$$" 2>/dev/null
}}
"""
# The keys of both caches from ONE `stat` of what they depend on (inode, size, mtime), after the live
# sections set $b (boot_id), $lib and $kit. $kroot (root facts): the boot image and the kit. $kbox (box
# facts): those, python3 (found on PATH with builtins), dpkg's status (any package change), libsophon and
# the sail module file the kept import found ($p). /dev/null separates the two parts.
_KEYS = (
    'py=; IFS=:; for d in $PATH; do [ -x "$d/python3" ] && { py=$d/python3; break; }; done; unset IFS\n'
    f'p=; c="{BOX_CACHE}"; [ -r "$c" ] && read -r p < "$c"\n'
    "keys() {\n"
    f'  s=$(stat -L --printf \'%n:%i:%s:%y|\' {BOOT_IMAGE} "$kit" /dev/null "$py" /var/lib/dpkg/status '
    f'{LIBSOPHON_LINK} "$p" 2>/dev/null)\n'
    '  kroot="$b $kit ${s%%/dev/null:*}"; kbox="$b $lib $kit $s"\n'
    "}\nkeys\n"
)


def _section(name: str, command: str) -> str:
    return f"echo; echo '{MARK}{name}'; {{ {command}; }}\n"


def _live_sections() -> str:
    """Facts read on every probe, with shell builtins where they do (every fork costs the box ~1-3 ms)."""
    return "".join(
        _section(name, command)
        for name, command in [
            ("hostname", 'read -r h < /proc/sys/kernel/hostname && echo "$h" || hostname'),
            ("boot_id", 'b=; read -r b < /proc/sys/kernel/random/boot_id && echo "$b"'),
            (
                "cpuinfo",
                'while IFS= read -r l; do case "$l" in "model name"*) echo "$l"; break;; esac; '
                "done < /proc/cpuinfo",
            ),
            ("libsophon", f'lib=; cd -P {LIBSOPHON_LINK} 2>/dev/null && lib=$PWD && echo "$lib"; cd /'),
            (
                "driver",
                "for f in /sys/module/bmtpu/version /proc/bmsophon/driver_version; do "
                '[ -r "$f" ] && { read -r v < "$f"; echo "$v"; }; done',
            ),
            (
                "meminfo",
                'while read -r k v u; do case "$k" in MemTotal:) echo "$k $v $u"; break;; esac; '
                "done < /proc/meminfo",
            ),
            (
                "df",
                f"set --; for p in {' '.join(DISKS)}; do "
                '[ -e "$p" ] && set -- "$@" "$p" || echo "$p"; done; '
                'df -Pk "$@" 2>/dev/null | { read -r _; for p in "$@"; do read -r l && echo "$p $l"; done; }',
            ),
            (
                "kit",
                "kit=; for k in "
                + " ".join(KIT_PATHS)
                + '; do [ -f "$k" ] && { kit=$k; echo "$k"; break; }; done',
            ),
            ("runtime", f'cd -P {RUNTIME_LINK} 2>/dev/null && echo "$PWD"; cd /'),
            (
                "assets",
                f'for d in {MODELS_DIR}/*/*/; do [ -d "$d" ] || continue; '
                f'set -- "$d"*.bmodel{VERIFIED_MARKER}; '
                f'if [ -e "$1" ]; then echo "verified $d"; else echo "present $d"; fi; done',
            ),
        ]
    )


def _box_sections() -> str:
    """uname, dts, bm_version and the sail import: the same until a reboot, a package, python3 or sail change.

    A successful `import sophon.sail` costs 0.1-0.5 s of box CPU (it loads libsophon); failures are not kept.
    """
    python = f'python3 -c {quote_command([_PYTHON])} 2>&1 || echo "python missing"'
    ask = "".join(
        _section(name, command)
        for name, command in [
            ("uname", "uname -rvm"),
            (
                "dts",
                "{ tr -d '\\0' < /proc/device-tree/info/file-name || "
                "tr -d '\\0' < /sys/firmware/devicetree/base/info/file-name; } 2>/dev/null",
            ),
            (
                "bm_version",
                "{ if [ -x /usr/sbin/bm_version ]; then /usr/sbin/bm_version 2>&1; "
                "elif command -v bm_version >/dev/null; then bm_version 2>&1; fi; } "
                f"| head -c {TOOL_OUTPUT_BYTES}",
            ),
            ("python", python),
        ]
    )
    return (
        f'c="{BOX_CACHE}"\nif ! replay "$c" "$kbox" box; then\nout=$(\n{ask})\nprintf \'%s\\n\' "$out"\n'
        f'case "$out" in *"${{nl}}sail ok${{nl}}path "*) p=${{out##*"${{nl}}path "}}; p=${{p%%"$nl"*}}; '
        f'keys; keep "$c" "$p" "$kbox";; esac\nfi\n'
    )


def _root_sections(sudo: str) -> str:
    """Ion heap sizes (debugfs) and, with a kit, `memory_edit.sh -p`: the same until a reboot, another boot
    image or another kit. Run via sudo with the password on fd 3 (nothing else can read it). A replayed part
    is followed by `sudo -k true`, so a wrong password is noticed even when the heaps need no sudo."""
    ask = _section("root", f'{sudo} -- sh -c {quote_command([_ROOT])} sh "$kit" <&3 2>&1; echo "exit=$?"')
    check = _section("sudo", f'{sudo} -k -- true <&3 2>&1; echo "exit=$?"')
    return (
        f'c="{ROOT_CACHE}"\nif ! replay "$c" "$kroot" root; then\nout=$(\n{ask})\nprintf \'%s\\n\' "$out"\n'
        'case "$out" in *" ?"*) ;; *"exit=0") keep "$c" "" "$kroot";; esac\n'
        f"else\n{check}fi\n"
    )


def probe_script(*, with_password: bool, fresh: bool = False) -> str:
    """The shell script gathering every fact; root parts via `sudo -S` (password on stdin) or `sudo -n`.

    `fresh` asks everything again instead of replaying what the box kept from earlier probes of this boot.
    """
    sudo = "sudo -S -p ''" if with_password else "sudo -n"
    # stdin (the sudo password) is kept on fd 3 for sudo alone; nothing else can read it
    return (
        f"exec 3<&0 </dev/null\nfresh={'1' if fresh else ''}\n{_CACHE_FUNCTIONS}"
        f"{_live_sections()}{_KEYS}{_root_sections(sudo)}{_box_sections()}"
        f"echo; echo '{MARK}end'\n"
    )
