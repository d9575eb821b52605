#!/bin/bash
# PID 1 of a simulated box, run inside fresh mount/uts/pid namespaces (and the box's net namespace).
# Builds the box's root (overlay over the host's /, with its own /boot, /data, /opt/sophon and hardware
# views bind-mounted at the real paths), then becomes the box's systemd (which starts sshd as a unit).
# All mounts die with the namespace; the box's cgroup (SIM_CGROUP, under sophon-sim/) is removed by the host
# after power-off. usage: boxinit.sh BOX_DIR NAME OVERLAY_DIR
set -eu
B=$1; name=$2; O=$3
R=$B/root
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$O/upper,workdir=$O/work" "$R"
for m in proc sys dev dev/pts dev/shm; do mount --rbind "/$m" "$R/$m"; done
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -p "$R/boot" "$R/data" "$R/opt/sophon" "$R/opt/sophon-sim-site" "$R$B"
mount --bind "$B/fs/boot" "$R/boot"
mount --bind "$B/fs/data" "$R/data"
mount --bind "$B/fs/opt_sophon" "$R/opt/sophon"
mount --bind "$B" "$R$B"
mount --bind "$B/hw/cpuinfo" "$R/proc/cpuinfo"
mount --bind "$B/hw/boot_id" "$R/proc/sys/kernel/random/boot_id"
mount --bind "$B/hw/firmware" "$R/sys/firmware"
mount --bind "$B/hw/debug" "$R/sys/kernel/debug"
if [ -d "$B/fs/srv" ]; then mkdir -p "$R/srv/dfss"; mount --bind -o ro "$B/fs/srv" "$R/srv/dfss"; fi
if [ -n "${SIM_SITE:-}" ]; then mount --bind -o ro "$SIM_SITE" "$R/opt/sophon-sim-site"; fi
# never rename the host: only inside a UTS namespace of our own
if [ "$(readlink /proc/self/ns/uts)" != "$HOST_UTS" ]; then hostname "$name"; fi
mount --bind "$B/run/console.log" "$R/dev/console"   # the box's console is its log, never the host's
# cgroups for the box's systemd (`ip netns exec` gave us a sysfs without them): the host's hierarchies,
# entered at the box's own cgroup $SIM_CGROUP, which systemd takes as its root (SIM_CGROUP_LAYOUT: hybrid|unified)
C="$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 cgroup "$C"
if [ "$SIM_CGROUP_LAYOUT" = hybrid ]; then
  mkdir "$C/systemd" "$C/unified"
  mount -t cgroup -o none,name=systemd cgroup "$C/systemd"
  mount -t cgroup2 cgroup2 "$C/unified"
  tops="$C/systemd $C/unified"
else
  umount "$C"; mount -t cgroup2 cgroup2 "$C"; tops=$C
fi
for top in $tops; do mkdir -p "$top/$SIM_CGROUP"; echo 0 > "$top/$SIM_CGROUP/cgroup.procs"; done
export container=sophon-sim
exec chroot "$R" /lib/systemd/systemd --system --show-status=false --log-level=warning
