# Shell functions both local clusters use: scripts/ceph-cluster.sh (one node)
# and scripts/ceph-faults.sh (a cluster to break). Sourced, not run. The
# caller sets $dir (the cluster's directory) and $conf (its ceph.conf) and
# defines log and die.

ceph_() { timeout 60 ceph --conf "$conf" --name client.admin "$@"; }

# osd_class_dir: Debian sid's Ceph 20.2.4 has a relative default
# ("lib/x86_64-linux-gnu/rados-classes"), which the OSD resolves against its
# working directory: without an absolute path it loads no object class and
# RBD and the mgr's database fail with "Operation not supported".
class_dir() {
	local d
	d=$(ceph-conf -c /dev/null --show-config-value osd_class_dir 2>/dev/null || true)
	[[ $d == /* ]] || d=/usr/$d
	echo "$d"
}

wait_for() { # seconds description command...
	local limit=$1 what=$2
	shift 2
	local end=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || die "timed out waiting for $what (logs in $dir/log)"
		sleep 0.2
	done
}

fs_active() { ceph_ fs status myfs 2>/dev/null | grep -q active; }
health_ok() { ceph_ health | grep -q HEALTH_OK; }

create_user() { # name caps...  -> prints key
	ceph_ auth get-or-create-key "client.$1" "${@:2}"
}

# provision_pools_and_users makes what the tests use: the RBD pools rbd and
# rbd2, the CephFS myfs, and cephx users with the capabilities Rook gives
# the CSI drivers, whose IDs and keys go to $dir/secrets.env (mode 0600).
provision_pools_and_users() {
	local p
	for p in rbd rbd2; do
		ceph_ osd pool create "$p" 8 8 >/dev/null 2>&1
		timeout 60 rbd --conf "$conf" --name client.admin pool init "$p"
	done
	ceph_ osd pool create myfs-metadata 8 8 >/dev/null 2>&1
	ceph_ osd pool create myfs-data0 8 8 >/dev/null 2>&1
	ceph_ osd pool set myfs-metadata pg_autoscale_mode off >/dev/null 2>&1
	ceph_ fs new myfs myfs-metadata myfs-data0 >/dev/null 2>&1
	ceph_ fs set myfs standby_count_wanted 0 >/dev/null 2>&1

	local rbd_prov rbd_node fs_prov fs_node
	rbd_prov=$(create_user csi-rbd-provisioner mon 'profile rbd, allow command "osd blocklist"' mgr 'allow rw' osd 'profile rbd')
	rbd_node=$(create_user csi-rbd-node mon 'profile rbd' mgr 'allow rw' osd 'profile rbd')
	fs_prov=$(create_user csi-cephfs-provisioner mon 'allow r, allow command "osd blocklist"' mgr 'allow rw' osd 'allow rw tag cephfs metadata=*' mds 'allow *')
	fs_node=$(create_user csi-cephfs-node mon 'allow r' mgr 'allow rw' osd 'allow rw tag cephfs *=*' mds 'allow rw')
	(
		umask 077
		cat >"$dir/secrets.env" <<EOS
CEPH_RBD_PROVISIONER_ID=csi-rbd-provisioner
CEPH_RBD_PROVISIONER_KEY=$rbd_prov
CEPH_RBD_NODE_ID=csi-rbd-node
CEPH_RBD_NODE_KEY=$rbd_node
CEPH_FS_PROVISIONER_ID=csi-cephfs-provisioner
CEPH_FS_PROVISIONER_KEY=$fs_prov
CEPH_FS_NODE_ID=csi-cephfs-node
CEPH_FS_NODE_KEY=$fs_node
EOS
	)
}
