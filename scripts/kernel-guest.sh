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
# a busybox initramfs that loads the modules, mounts the project's dev root
# (scripts/build-root.sh dev: Ceph $CEPH_VERSION's tools and libraries)
# read-only over 9p below a tmpfs overlay, mounts the checkout and its
# _output, and serves commands on a virtio-serial port (see
# scripts/kernel-guest-init.sh). Its only network is a tap device in the
# namespace $KT_NETNS; nothing is routed anywhere else.
#
# Environment: KT_CACHE (default ~/.cache/cephcsi-kernel), KT_STATE (run
# files, default _output/kernel-guest), KT_KERNEL_FROM (where the kernel
# package comes from: "root", the default, is the dev root's Debian
# $CEPH_SUITE; "host" is the host's own Debian), KT_KERNEL_PKG (a
# linux-image-*-amd64 package; default: what linux-image-amd64 depends on
# there), KT_REFRESH (ask apt again although a kernel is cached),
# KT_GUEST_ROOT (the guest's root; default: scripts/build-root.sh dev),
# KT_NETNS (cephcsi-kt), KT_TAP (kt-tap0), KT_HOST_ADDR (10.99.1.1),
# KT_GUEST_ADDR (10.99.1.2), KT_MEM (MiB, 2048), KT_SMP (2).
set -euo pipefail
# Failures inside $(...) count too (build_initramfs runs in one).
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=/dev/null
. "$repo/build.env"
cache=${KT_CACHE:-$HOME/.cache/cephcsi-kernel}
kernel_from=${KT_KERNEL_FROM:-root}
state=${KT_STATE:-$repo/_output/kernel-guest}
netns=${KT_NETNS:-cephcsi-kt}
tap=${KT_TAP:-kt-tap0}
host_addr=${KT_HOST_ADDR:-10.99.1.1}
guest_addr=${KT_GUEST_ADDR:-10.99.1.2}
mem=${KT_MEM:-2048}
smp=${KT_SMP:-2}
# Modules the guest loads at boot, in this order (dependencies come along).
# Each must be a module or built in. A "?" marks one that only some kernels
# need, loaded where the kernel has it as a module and skipped where it has
# not: crc32c_generic for 6.1's libcrc32c; authenc and cts for 7.x's AES256K
# cephx keys, whose krb5 code asks the crypto API for
# authenc(hmac(sha384),cts(cbc(aes))) when libceph prepares the key, a
# run-time request that modules.dep does not show (without them: "libceph:
# cannot prepare key: -65"; hmac, sha512, cbc and aes are built into
# Debian's 7.x). For LUKS-encrypted volumes: dm_mod and dm_crypt, xts for
# its default aes-xts-plain64 (aes and ecb are built in), and the AF_ALG
# sockets through which cryptsetup checks that the kernel has the cipher.
modules=('?crc32c_generic' virtio_pci virtio_net virtio_console 9pnet_virtio 9p overlay
	ext4 xfs libceph '?authenc' '?cts' rbd ceph nbd dm_mod dm_crypt xts '?af_alg' '?algif_skcipher')

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
	# Other work on this machine may hold dpkg's lock for a while.
	apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# kapt runs an apt or dpkg command where the kernel comes from: inside the
# dev root (Debian $CEPH_SUITE) or on the host.
kapt() {
	if [[ $kernel_from == host ]]; then
		"$@"
	else
		"$here/in-root" "$@"
	fi
}

# origin names where kernels come from, as recorded with each cached one.
origin() {
	case $kernel_from in
	root) echo "root:$CEPH_SUITE" ;;
	host)
		# shellcheck source=/dev/null
		echo "host:$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")"
		;;
	*) die "KT_KERNEL_FROM is root or host, not $kernel_from" ;;
	esac
}

# cached_kernel prints the newest prepared kernel of this origin (and of
# KT_KERNEL_PKG when set), named PACKAGE_VERSION, or nothing.
cached_kernel() {
	local want d
	want=$(origin)
	for d in "$cache"/*/ready; do
		[[ -f $d ]] || continue
		d=$(dirname "$d")
		[[ "$(cat "$d/origin" 2>/dev/null)" == "$want" ]] || continue
		[[ -z "${KT_KERNEL_PKG:-}" || ${d##*/} == "${KT_KERNEL_PKG}_"* ]] || continue
		echo "${d##*/}"
	done | sort -V | tail -1
}

# resolve_kernel asks apt for the kernel package, its exact version and the
# packages that hold its files; it prints "VERSION PACKAGE=VERSION...".
# Bookworm's linux-image-6.1 package holds everything; sid's linux-image-7.x
# is empty and depends on linux-binary-* (the image), linux-modules-* and
# linux-base-* (config, modules.builtin) of the same version.
resolve_kernel() {
	local pkg=${KT_KERNEL_PKG:-} show version parts
	kapt apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null ||
		log "apt-get update failed; trying the package lists as they are"
	if [[ -z $pkg ]]; then
		pkg=$(kapt apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
		[[ -n $pkg ]] || die "cannot resolve linux-image-amd64 to a kernel package ($(origin))"
	fi
	show=$(kapt apt-cache show --no-all-versions "$pkg" 2>/dev/null) || true
	version=$(awk '/^Version:/ { print $2; exit }' <<<"$show")
	[[ -n $version ]] || die "apt knows no package $pkg ($(origin))"
	parts=$(awk -v ver="$version" '
		/^Depends:/ {
			sub(/^Depends: */, "")
			n = split($0, deps, /, */)
			for (i = 1; i <= n; i++) {
				split(deps[i], w, " ")
				if (w[1] ~ /^linux-(base|binary|modules)-[0-9]/)
					printf " %s=%s", w[1], ver
			}
			exit
		}' <<<"$show")
	echo "$version $pkg=$version$parts"
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

# prepare_kernel downloads PACKAGE=VERSION... and leaves in $kdir: vmlinux,
# the modules tree with a modules.dep (and modules.builtin when the packages
# have it), config, kver, origin and the file "ready".
prepare_kernel() {
	local kdir=$1 t0 t1 d f kver=
	shift
	t0=$(now)
	rm -rf "$kdir"
	mkdir -p "$kdir/deb" "$kdir/x"
	# apt and dpkg run with the cache as working directory, so that the
	# dev root sees it (scripts/in-root binds the working directory).
	(cd "$kdir/deb" && kapt apt-get download -q "$@" >../download.log 2>&1) || {
		grep -v 'unsandboxed' "$kdir/download.log" >&2
		die "apt-get download $* failed"
	}
	log "downloaded $(du -sh "$kdir/deb" | cut -f1) in $(since "$t0") s: $*"
	t1=$(now)
	for f in "$kdir"/deb/*.deb; do
		(cd "$kdir" && kapt dpkg-deb -x "$f" x)
	done
	# Modules live in lib/modules (6.1) or usr/lib/modules (7.x); depmod
	# wants lib/modules below its base.
	for d in "$kdir"/x/usr/lib/modules/*; do
		[[ -d $d && ! -L $kdir/x/lib ]] || continue
		mkdir -p "$kdir/x/lib/modules"
		mv "$d" "$kdir/x/lib/modules/"
	done
	for d in "$kdir"/x/lib/modules/*/kernel; do
		[[ -d $d ]] || continue
		[[ -z $kver ]] || die "more than one kernel in $*"
		kver=$(basename "$(dirname "$d")")
	done
	[[ -n $kver ]] || die "no modules in $*"
	local mdir="$kdir/x/lib/modules/$kver" image=
	for f in "$kdir/x/boot/vmlinuz-$kver" "$mdir/vmlinuz"; do
		[[ -f $f ]] && image=$f
	done
	[[ -n $image ]] || die "no vmlinuz in $*"
	extract_vmlinux "$image" "$kdir/vmlinux"
	for f in "$kdir/x/boot/config-$kver" "$mdir/config"; do
		[[ -f $f ]] && cp "$f" "$kdir/config"
	done
	log "extracted in $(since "$t1") s"
	t1=$(now)
	# The packages ship no modules.dep. The dev root's depmod (kmod; the
	# host may have none) reads compressed modules (7.x's are .ko.xz).
	(cd "$kdir" && "$here/in-root" depmod -b "$kdir/x" "$kver") 2>&1 | { grep -v 'could not open modules\.' || true; } >&2
	[[ -s $mdir/modules.dep ]] || die "depmod wrote no modules.dep for $kver"
	log "depmod in $(since "$t1") s"
	echo "$kver" >"$kdir/kver"
	mv "$mdir" "$kdir/modules"
	rm -rf "$kdir/x" "$kdir/deb" "$kdir/download.log"
	origin >"$kdir/origin"
	touch "$kdir/ready"
	log "kernel ${kdir##*/} ($kver) prepared in $(since "$t0") s"
}

# build_initramfs packs busybox, /init, the modules the guest loads and
# their dependencies, decompressed (so busybox's insmod needs no xz).
# Cached under a key of everything that goes in.
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
	# The closure of the wanted modules over modules.dep.
	local dep="$kdir/modules/modules.dep" builtin="$kdir/modules/modules.builtin"
	local want=() files=() load=() m name pat line f plain
	for m in "${modules[@]}"; do
		name=${m#\?}
		pat="/${name//[_-]/[_-]}\.ko"
		line=$(grep -E "${pat}(\.[a-z]+)?:" "$dep" | head -1) || true
		if [[ -n $line ]]; then
			read -ra files <<<"${line/:/}"
			want+=("${files[@]}")
			load+=("$name")
		elif [[ -f $builtin ]] && grep -qE "${pat}\$" "$builtin"; then
			continue
		elif [[ $m == \?* ]]; then
			log "$name: not in $kver, not needed there"
		elif [[ -f $builtin ]]; then
			die "$name is neither a module of $kver nor built into it"
		else
			die "module $name not in $kver (and no modules.builtin says it is built in)"
		fi
	done
	printf '%s\n' "${load[@]}" >"$root/modules.load"
	: >"$root/lib/modules/$kver/modules.dep"
	for f in $(printf '%s\n' "${want[@]}" | sort -u); do
		plain=${f%.xz}
		plain=${plain%.zst}
		plain=${plain%.gz}
		mkdir -p "$root/lib/modules/$kver/$(dirname "$f")"
		case $f in
		*.xz) xz -dc ;;
		*.zst) zstd -dcq ;;
		*.gz) gzip -dc ;;
		*) cat ;;
		esac <"$kdir/modules/$f" >"$root/lib/modules/$kver/$plain"
		grep -E "^$f:" "$dep" | sed -E 's/\.ko\.(xz|zst|gz)/.ko/g' >>"$root/lib/modules/$kver/modules.dep"
	done
	(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$out.tmp")
	mv "$out.tmp" "$out"
	rm -rf "$root"
	find "$kdir" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "${out##*/}" -delete
	log "initramfs built in $(since "$t0") s ($(du -h "$out" | cut -f1)), loads: ${load[*]}"
	echo "$out"
}

prepare() {
	need_tools
	local t0 name='' kdir initrd version resolved
	t0=$(now)
	mkdir -p "$cache" "$state"
	# A cached kernel is used without asking apt.
	[[ -n "${KT_REFRESH:-}" ]] || name=$(cached_kernel)
	if [[ -z $name ]]; then
		read -r version resolved <<<"$(resolve_kernel)"
		[[ -n $resolved ]] || die "no kernel package resolved"
		name=${resolved%%=*}_$version
		log "resolved ${resolved%%=*} $version through apt ($(origin)) in $(since "$t0") s"
		# (Not "[[ ]] || prepare_kernel": errexit would be off inside it.)
		if [[ ! -f $cache/$name/ready ]]; then
			# shellcheck disable=SC2086 # PACKAGE=VERSION words
			prepare_kernel "$cache/$name" $resolved
		fi
	fi
	kdir="$cache/$name"
	initrd=$(build_initramfs "$kdir")
	cat >"$state/assets.env" <<EOF
KT_VMLINUX=$kdir/vmlinux
KT_INITRD=$initrd
KT_KERNEL_VERSION=$(cat "$kdir/kver")
KT_KERNEL_PACKAGE=$name
EOF
	log "assets ready in $(since "$t0") s: kernel $(cat "$kdir/kver") ($name from $(origin))"
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
	# The guest's root: the dev root, whose Ceph tools and libraries the
	# Tentacle-built cephcsi needs.
	local sysroot
	sysroot=${KT_GUEST_ROOT:-$("$here/build-root.sh" dev)}
	[[ -x $sysroot/usr/bin/rbd-nbd ]] || die "$sysroot is no Ceph root (no rbd-nbd)"
	# The checkout is mounted at its own path unless that lies below a
	# directory the guest covers with a tmpfs of its own (/tmp, /run, /dev);
	# _output is always at /kt-output.
	local repo_at=$repo
	case $repo/ in
	/tmp/* | /run/* | /dev/* | *[[:space:]]*) repo_at= ;;
	esac
	rm -f "$state/agent.sock" "$state/console.log" "$state/qemu.pid"
	local t0
	t0=$(now)
	in_ns qemu-system-x86_64 -accel tcg -cpu max -nodefaults -display none -no-reboot \
		-smp "$smp" -m "$mem" \
		-kernel "$KT_VMLINUX" -initrd "$KT_INITRD" \
		-append "console=ttyS0 loglevel=4 panic=-1 kt.addr=$guest_addr/24${repo_at:+ kt.repo=$repo_at}" \
		-serial "file:$state/console.log" \
		-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
		-device virtio-net-pci,netdev=n0 \
		-virtfs "local,path=$sysroot,mount_tag=sysroot,security_model=none,readonly=on,multidevs=remap" \
		-virtfs "local,path=$repo,mount_tag=ktrepo,security_model=none,readonly=on,multidevs=remap" \
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
	log "guest up in $(since "$t0") s (kernel $KT_KERNEL_VERSION, $(grep -o 'KT-READY [0-9.]*' "$state/console.log" | cut -d' ' -f2) s guest uptime, root $sysroot)"
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
	sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
