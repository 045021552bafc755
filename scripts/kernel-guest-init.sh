#!/bin/busybox sh
# shellcheck shell=dash
# /init of the kernel-test guest (packed into its initramfs by
# scripts/kernel-guest.sh; runs under busybox, never on the host).
#
# Loads the modules the node paths need, configures the guest's address,
# mounts the project's dev root (9p share "sysroot", read-only) under a tmpfs
# overlay at /newroot so that its Ceph tools and libraries run in the guest
# on a writable but throw-away root, mounts the checkout and its _output, and
# then serves commands on the virtio-serial port "kt.agent":
#
#   host -> guest: "<id> <timeout seconds> <base64 of a shell command>\n"
#   guest -> host: the command's stdout+stderr in base64 lines, then
#                  "__KT_RC__ <id> <exit status>\n"
#
# Each command runs as `sh -c` inside the chroot of /newroot, in a session of
# its own that is killed (status 137) when it outlives its timeout, so that
# one stuck command cannot wedge the agent. Commands are never written to a file (a check command may carry a
# key to search for).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The kernel asks /sbin/modprobe for modules it loads on demand.
ln -sf /bin/busybox /sbin/modprobe

say() { echo "kt-init: $*" >/dev/ttyS0; }

for m in $(cat /modules.load); do
	modprobe "$m" || say "modprobe $m failed"
done

# The guest's address (kt.addr=) and the checkout's path (kt.repo=) come on
# the kernel command line.
repo=
for kv in $(cat /proc/cmdline); do
	case "$kv" in
	kt.addr=*) addr=${kv#kt.addr=} ;;
	kt.repo=*) repo=${kv#kt.repo=} ;;
	esac
done
ip link set lo up
ip link set eth0 up
ip addr add "${addr:-10.99.1.2/24}" dev eth0

mkdir -p /sysroot /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 sysroot /sysroot || say "9p mount of sysroot failed"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/sysroot,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || say "overlay mount failed"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -o bind /dev /newroot/dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mount -t tmpfs -o mode=0755 run /newroot/run
# The checkout at its own path (the host leaves kt.repo out when the path is
# below /tmp, /run or /dev, which the guest covers with its own tmpfs), and
# its _output (driver binary, test cluster's config.json) always at a fixed
# path.
if [ -n "$repo" ]; then
	mkdir -p "/newroot$repo"
	mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 ktrepo "/newroot$repo" || say "9p mount of ktrepo failed"
fi
mkdir -p /newroot/kt-output
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 ktout /newroot/kt-output || say "9p mount of ktout failed"
# The overlay's writable layer, visible to checks that search what the guest
# wrote to disk-like filesystems.
mkdir -p /newroot/.kt-rw
mount -o bind /rw /newroot/.kt-rw
mount -o remount,ro,bind /newroot/.kt-rw

port=
for d in /sys/class/virtio-ports/*; do
	[ "$(cat "$d/name" 2>/dev/null)" = kt.agent ] && port=/dev/${d##*/}
done
if [ -z "$port" ]; then
	say "no kt.agent port"
	exec sh
fi
say "KT-READY $(cut -d' ' -f1 /proc/uptime)"

# run_bounded runs $cmd in the chroot, killing its process group after $secs.
run_bounded() {
	setsid chroot /newroot /bin/sh -c "$cmd" </dev/null 2>&1 &
	pid=$!
	(
		trap 'kill $s 2>/dev/null; exit 0' TERM
		sleep "$secs" &
		s=$!
		wait $s && kill -KILL -"$pid" 2>/dev/null
	) &
	watch=$!
	wait "$pid"
	rc=$?
	kill "$watch" 2>/dev/null
	return $rc
}

set -o pipefail
# The port reads end-of-file while no host client is connected: reopen it.
while :; do
	exec 3<>"$port"
	while IFS=' ' read -r id secs line <&3; do
		[ -n "$line" ] || continue
		cmd=$(printf '%s' "$line" | base64 -d)
		run_bounded | base64 >&3
		rc=$?
		printf '__KT_RC__ %s %d\n' "$id" "$rc" >&3
	done
	exec 3>&-
	sleep 0.2
done
