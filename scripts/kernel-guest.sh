#!/usr/bin/env bash
# A QEMU guest running Debian's stock kernel, for testing the node paths that
# need kernel modules this host lacks (krbd, rbd-nbd, the CephFS kernel client).
#
#   scripts/kernel-guest.sh deps       install qemu, busybox-static, iproute2...
#                                      when missing
#   scripts/kernel-guest.sh prepare    fetch the kernel package, extract an
#                                      uncompressed vmlinux and the modules,
#                                      build the initramfs (cached)
#   scripts/kernel-guest.sh net-up     network namespace + tap for the guest
#   scripts/kernel-guest.sh boot       start the guest in the namespace and
#                                      wait until its command agent is up
#   scripts/kernel-guest.sh stop       stop the guest
#   scripts/kernel-guest.sh net-down   remove the namespace and the tap
#   scripts/kernel-guest.sh clean      stop + net-down (also after a killed run)
#   scripts/kernel-guest.sh status     exit 0 when the guest runs
#   scripts/kernel-guest.sh env        print the variables a test needs
#
# The guest boots the uncompressed kernel directly (PVH entry) under TCG, with
# a busybox initramfs that loads the modules, mounts the host's root read-only
# over 9p below a tmpfs overlay and serves commands on a virtio-serial port
# (see scripts/kernel-guest-init.sh). Its only network is a tap device in the
# namespace $KT_NETNS; nothing is routed anywhere else.
#
# Environment: KT_CACHE (default ~/.cache/cephcsi-kernel), KT_STATE (run
# files, default _output/kernel-guest), KT_KERNEL_PKG (a linux-image-*-amd64
# package; default: what linux-image-amd64 depends on, or the newest already
# cached), KT_NETNS (cephcsi-kt), KT_TAP (kt-tap0), KT_HOST_ADDR (10.99.1.1),
# KT_GUEST_ADDR (10.99.1.2), KT_MEM (MiB, 2048), KT_SMP (2).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${KT_CACHE:-$HOME/.cache/cephcsi-kernel}
state=${KT_STATE:-$repo/_output/kernel-guest}
netns=${KT_NETNS:-cephcsi-kt}
tap=${KT_TAP:-kt-tap0}
host_addr=${KT_HOST_ADDR:-10.99.1.1}
guest_addr=${KT_GUEST_ADDR:-10.99.1.2}
mem=${KT_MEM:-2048}
smp=${KT_SMP:-2}
# Modules the guest loads at boot, in this order (dependencies come along).
modules=(crc32c_generic virtio_pci virtio_net virtio_console 9pnet_virtio 9p overlay
	ext4 xfs libceph rbd ceph nbd)

log() { echo "kernel-guest: $*" >&2; }
die() {
	log "$*"
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_tools() {
	local missing=()
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	# The initramfs has no libc: its busybox must be the static one.
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || missing+=(busybox-static)
	command -v ip >/dev/null || missing+=(iproute2)
	command -v xz >/dev/null || missing+=(xz-utils)
	command -v zstd >/dev/null || missing+=(zstd)
	[[ ${#missing[@]} -eq 0 ]] && return
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# kernel_package picks the linux-image package to use.
kernel_package() {
	if [[ -n "${KT_KERNEL_PKG:-}" ]]; then
		echo "$KT_KERNEL_PKG"
		return
	fi
	local newest
	newest=$(find "$cache" -mindepth 2 -maxdepth 2 -name ready -printf '%h\n' 2>/dev/null | xargs -r -n1 basename | sort -V | tail -1)
	if [[ -n "$newest" && -z "${KT_REFRESH:-}" ]]; then
		echo "$newest"
		return
	fi
	local dep
	dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	if [[ -z "$dep" ]]; then
		apt-get update -qq >/dev/null
		dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	fi
	[[ -n "$dep" ]] || die "cannot resolve linux-image-amd64 to a kernel package"
	echo "$dep"
}

# extract_vmlinux finds a compressed stream in a bzImage (xz, zstd or gzip,
# tried at every offset their magic appears) and writes the first one that
# decompresses to an ELF image.
extract_vmlinux() {
	local bz=$1 out=$2 name magic tool off
	for name in xz zstd gzip; do
		case $name in
		xz) magic='\xfd\x37\x7a\x58\x5a\x00' tool=(xz -dc --single-stream) ;;
		zstd) magic='\x28\xb5\x2f\xfd' tool=(zstd -dcq) ;;
		gzip) magic='\x1f\x8b\x08' tool=(gzip -dc) ;;
		esac
		for off in $(LC_ALL=C grep -obUaP "$magic" "$bz" | cut -d: -f1); do
			tail -c +$((off + 1)) "$bz" | "${tool[@]}" >"$out.tmp" 2>/dev/null || true
			if [[ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" == 7f454c46 ]]; then
				mv "$out.tmp" "$out"
				log "vmlinux: $name stream at offset $off"
				return 0
			fi
		done
	done
	rm -f "$out.tmp"
	die "no compressed ELF kernel found in $bz"
}

# prepare_kernel leaves in $kdir: vmlinux, the modules tree (only what the
# guest loads) with a modules.dep, and the file "ready".
prepare_kernel() {
	local pkg=$1 kdir=$2
	[[ -f "$kdir/ready" ]] && return
	local t0
	t0=$(now)
	rm -rf "$kdir"
	mkdir -p "$kdir/deb"
	(cd "$kdir/deb" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
		die "apt-get download $pkg failed"
	local deb
	deb=$(ls "$kdir"/deb/*.deb)
	mkdir -p "$kdir/x"
	dpkg-deb -x "$deb" "$kdir/x"
	local kver
	kver=$(ls "$kdir/x/lib/modules")
	extract_vmlinux "$kdir/x/boot/vmlinuz-$kver" "$kdir/vmlinux"
	# The package ships no modules.dep; busybox's depmod makes one.
	/bin/busybox depmod -b "$kdir/x" "$kver"
	echo "$kver" >"$kdir/kver"
	mv "$kdir/x/lib/modules/$kver" "$kdir/modules"
	rm -rf "$kdir/x" "$kdir/deb"
	touch "$kdir/ready"
	log "kernel $pkg ($kver) prepared in $(since "$t0") s"
}

# build_initramfs packs busybox, /init, the modules the guest loads and
# their dependencies. Cached under a key of everything that goes in.
build_initramfs() {
	local kdir=$1 kver key out t0
	kver=$(cat "$kdir/kver")
	key=$({
		sha256sum "$here/kernel-guest-init.sh" /bin/busybox
		echo "${modules[*]}"
	} | sha256sum | cut -c1-16)
	out="$kdir/initramfs-$key.cpio.gz"
	if [[ -f "$out" ]]; then
		echo "$out"
		return
	fi
	t0=$(now)
	local root="$kdir/initramfs-root"
	rm -rf "$root"
	mkdir -p "$root"/{bin,sbin,proc,sys,dev,lib/modules/"$kver"}
	cp /bin/busybox "$root/bin/busybox"
	cp "$here/kernel-guest-init.sh" "$root/init"
	chmod 755 "$root/init"
	printf '%s\n' "${modules[@]}" >"$root/modules.load"
	# The closure of the wanted modules over modules.dep.
	local dep="$kdir/modules/modules.dep" want=() files=() m line f
	for m in "${modules[@]}"; do
		line=$(grep -E "/${m//_/[_-]}\.ko(\.[a-z]+)?:" "$dep" | head -1) || die "module $m not in $kver"
		read -ra files <<<"${line/:/}"
		want+=("${files[@]}")
	done
	: >"$root/lib/modules/$kver/modules.dep"
	for f in $(printf '%s\n' "${want[@]}" | sort -u); do
		mkdir -p "$root/lib/modules/$kver/$(dirname "$f")"
		cp "$kdir/modules/$f" "$root/lib/modules/$kver/$f"
		grep -E "^$f:" "$dep" >>"$root/lib/modules/$kver/modules.dep"
	done
	(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$out.tmp")
	mv "$out.tmp" "$out"
	rm -rf "$root"
	find "$kdir" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "${out##*/}" -delete
	log "initramfs built in $(since "$t0") s ($(du -h "$out" | cut -f1))"
	echo "$out"
}

prepare() {
	need_tools
	local t0 pkg kdir initrd
	t0=$(now)
	mkdir -p "$cache" "$state"
	pkg=$(kernel_package)
	kdir="$cache/$pkg"
	prepare_kernel "$pkg" "$kdir"
	initrd=$(build_initramfs "$kdir")
	cat >"$state/assets.env" <<EOF
KT_VMLINUX=$kdir/vmlinux
KT_INITRD=$initrd
KT_KERNEL_VERSION=$(cat "$kdir/kver")
EOF
	log "assets ready in $(since "$t0") s: kernel $(cat "$kdir/kver")"
}

in_ns() { ip netns exec "$netns" "$@"; }

net_up() {
	need_tools
	if ! ip netns list | grep -qw "^$netns"; then
		ip netns add "$netns"
	fi
	in_ns ip link set lo up
	if ! in_ns ip link show "$tap" >/dev/null 2>&1; then
		in_ns ip tuntap add dev "$tap" mode tap
	fi
	in_ns ip addr replace "$host_addr/24" dev "$tap"
	in_ns ip link set "$tap" up
}

net_down() {
	if ip netns list | grep -qw "^$netns"; then
		# Processes left in the namespace keep it alive after its name is
		# gone: refuse to leave such a hidden namespace behind.
		local pids
		pids=$(ip netns pids "$netns" 2>/dev/null | tr '\n' ' ')
		[[ -z "${pids// /}" ]] || die "processes still run in netns $netns: $pids"
		ip netns del "$netns"
	fi
}

qemu_pid() {
	local pid
	[[ -f "$state/qemu.pid" ]] || return 1
	pid=$(cat "$state/qemu.pid")
	kill -0 "$pid" 2>/dev/null && [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == qemu-system-x86 ]] && echo "$pid"
}

boot() {
	[[ -f "$state/assets.env" ]] || prepare
	# shellcheck source=/dev/null
	. "$state/assets.env"
	[[ -f "$KT_VMLINUX" && -f "$KT_INITRD" ]] || {
		prepare
		. "$state/assets.env"
	}
	if qemu_pid >/dev/null; then
		log "guest already running (pid $(qemu_pid))"
		return
	fi
	ip netns list | grep -qw "^$netns" || die "netns $netns does not exist: run net-up first"
	rm -f "$state/agent.sock" "$state/console.log" "$state/qemu.pid"
	local t0
	t0=$(now)
	in_ns qemu-system-x86_64 -accel tcg -cpu max -nodefaults -display none -no-reboot \
		-smp "$smp" -m "$mem" \
		-kernel "$KT_VMLINUX" -initrd "$KT_INITRD" \
		-append "console=ttyS0 loglevel=4 panic=-1 kt.addr=$guest_addr/24" \
		-serial "file:$state/console.log" \
		-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
		-device virtio-net-pci,netdev=n0 \
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
		-virtfs "local,path=$repo/_output,mount_tag=ktout,security_model=none,readonly=on,multidevs=remap" \
		-device virtio-serial-pci \
		-chardev "socket,id=agent,path=$state/agent.sock,server=on,wait=off" \
		-device virtserialport,chardev=agent,name=kt.agent \
		-pidfile "$state/qemu.pid" -daemonize 2>"$state/qemu.log" ||
		die "qemu failed to start: $(cat "$state/qemu.log")"
	local end=$((SECONDS + ${KT_BOOT_TIMEOUT:-120}))
	until grep -q KT-READY "$state/console.log" 2>/dev/null; do
		qemu_pid >/dev/null || die "the guest died while booting; console: $(tail -20 "$state/console.log")"
		((SECONDS < end)) || die "the guest did not come up; console: $(tail -20 "$state/console.log")"
		sleep 0.1
	done
	if grep -q 'kt-init: .*failed' "$state/console.log"; then
		die "guest init failed: $(grep 'kt-init:' "$state/console.log")"
	fi
	log "guest up in $(since "$t0") s (kernel $KT_KERNEL_VERSION, $(grep -o 'KT-READY [0-9.]*' "$state/console.log" | cut -d' ' -f2) s guest uptime)"
}

stop() {
	local pid
	if pid=$(qemu_pid); then
		kill "$pid"
		local end=$((SECONDS + 10))
		while kill -0 "$pid" 2>/dev/null; do
			if ((SECONDS >= end)); then
				kill -9 "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
		log "guest stopped"
	fi
	rm -f "$state/qemu.pid" "$state/agent.sock"
}

print_env() {
	echo "KT_NETNS=$netns"
	echo "KT_HOST_ADDR=$host_addr"
	echo "KT_GUEST_ADDR=$guest_addr"
	echo "KT_AGENT_SOCK=$state/agent.sock"
	echo "KT_CONSOLE=$state/console.log"
}

case "${1:-}" in
deps) need_tools ;;
prepare) prepare ;;
net-up) net_up ;;
net-down) net_down ;;
boot) boot ;;
stop) stop ;;
clean)
	stop
	net_down
	;;
status) qemu_pid >/dev/null ;;
env) print_env ;;
*)
	sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
