#!/bin/bash
# memory_edit.sh v2.12 as the simulated boxes run it (sophon-fleet sim). It keeps the contract of Sophgo's
# script — output lines, size checks, exit 255 on errors, the new emmcboot.itb in its own folder, the
# .memeditBak backup, and never touching /boot/emmcboot.itb — over the simulator's stand-in boot image.
dir=$(dirname "$(readlink -f "$0")")
log="$dir/log_$(date +%Y_%m_%d_%H_%M_%S).log"
date > "$log" || exit 1   # the real script's first action: its folder must be writable by the caller
exec python3 "$dir/bintools/memory_edit.py" "$dir" "$log" "$@"
