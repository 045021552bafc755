//go:build kernel

// Package kernel tests the node paths that need a real Linux kernel with the
// rbd, nbd and ceph modules (krbd, rbd-nbd, the CephFS kernel client), which
// this host lacks. The node plugin is the real cephcsi binary running in a
// QEMU guest with Debian's stock kernel, serving CSI on TCP; the controller
// runs in this process; the cluster is a private one reachable from both.
// `make test-kernel` prepares all of it (scripts/kernel-test.sh) and runs
// this test inside the network namespace. See docs/kernel-tests.md.
package kernel

import (
	"encoding/base64"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

// Ports the node plugins listen on in the guest.
const (
	rbdPort    = 9101
	cephfsPort = 9102
)

// env is what every case uses: the guest, the cluster, the in-process
// controllers and the node services in the guest.
type env struct {
	g         *guest
	c         *testutil.Cluster
	rbdCtl    csi.ControllerClient
	fsCtl     csi.ControllerClient
	rbdNode   csi.NodeClient
	fsNode    csi.NodeClient
	rbdPlugin *plugin
	guestAddr string
	// hostOutput is the repository's _output directory on the host.
	hostOutput string
	// keys are every cephx key of the cluster's CSI users.
	keys []string
	// kmsConfig is the KMS configuration (a host path below _output) the
	// controllers and the guest's node plugins read.
	kmsConfig string
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// guestOutput is where the guest mounts the repository's _output
// (scripts/kernel-guest-init.sh).
const guestOutput = "/kt-output"

// guestPath is the guest's path of a host file: files below _output are
// reached through their own share, since the checkout may sit below a
// directory the guest covers (its /tmp is a tmpfs of its own).
func (e *env) guestPath(host string) string {
	if rel, err := filepath.Rel(e.hostOutput, host); err == nil && !strings.HasPrefix(rel, "..") {
		return path.Join(guestOutput, rel)
	}
	return host
}

// setup connects to the guest (booted by scripts/kernel-test.sh), starts the
// node plugins in it and the controllers here.
func setup(t *testing.T) *env {
	t.Helper()
	repo := testutil.RepoRoot()
	// The cluster the guest can reach: in the test's network namespace,
	// not the shared one on 127.0.0.1.
	clusterDir := getenv("KT_CLUSTER_DIR", filepath.Join(repo, "_output", "ceph-kernel"))
	t.Setenv("CEPHCSI_CLUSTER_DIR", clusterDir)
	c := testutil.RequireCluster(t)
	hostAddr := getenv("KT_HOST_ADDR", "10.99.1.1")
	if !strings.HasPrefix(c.Monitors, hostAddr+":") {
		t.Fatalf("cluster %s has monitors %s, not on %s where the guest reaches it", clusterDir, c.Monitors, hostAddr)
	}
	sock := getenv("KT_AGENT_SOCK", filepath.Join(repo, "_output", "kernel-guest", "agent.sock"))
	g, err := dialGuest(sock)
	if err != nil {
		t.Fatalf("no guest (run make test-kernel or scripts/kernel-test.sh): %v", err)
	}
	t.Cleanup(g.close)
	e := &env{g: g, c: c, guestAddr: getenv("KT_GUEST_ADDR", "10.99.1.2"), hostOutput: filepath.Join(repo, "_output")}
	for _, k := range []string{"CEPH_RBD_PROVISIONER_KEY", "CEPH_RBD_NODE_KEY", "CEPH_FS_PROVISIONER_KEY", "CEPH_FS_NODE_KEY"} {
		if v := c.Var(k); v != "" {
			e.keys = append(e.keys, v)
		}
	}
	if len(e.keys) != 4 {
		t.Fatalf("cluster env has %d of the 4 CSI keys", len(e.keys))
	}
	kver := strings.TrimSpace(g.sh(t, "uname -r"))
	// Tentacle's AES256K keys need Linux 7.0+ in krbd and the CephFS
	// kernel client (docs/kernel-tests.md): say which kind this cluster has.
	t.Logf("guest kernel %s; the CSI users' cephx keys are %s", kver, keyTypes(e.keys))

	e.kmsConfig = writeKMSConfig(t, e.hostOutput)
	binary := getenv("KT_CEPHCSI", filepath.Join(repo, "_output", "cephcsi"))
	step(t, "start node plugins in the guest", func() {
		e.rbdPlugin = e.startNodePlugin(t, binary, "rbd", rbdPort)
		e.rbdNode = e.rbdPlugin.node
		e.fsNode = e.startNodePlugin(t, binary, "cephfs", cephfsPort).node
	})
	step(t, "start controllers on the host", func() {
		e.rbdCtl = testutil.StartDriver(t, c, "rbd", func(o *config.Options) { o.KMSConfigPath = e.kmsConfig }).Controller
		e.fsCtl = testutil.StartDriver(t, c, "cephfs", func(o *config.Options) { o.KMSConfigPath = e.kmsConfig }).Controller
	})
	return e
}

// keyTypes names the cephx key types of keys (the first two bytes of a
// decoded key, little-endian: 1 AES, 2 AES256K).
func keyTypes(keys []string) string {
	seen := map[string]bool{}
	var names []string
	for _, k := range keys {
		name := "undecodable"
		if b, err := base64.StdEncoding.DecodeString(k); err == nil && len(b) >= 2 {
			switch typ := int(b[0]) | int(b[1])<<8; typ {
			case 1:
				name = "AES (type 1)"
			case 2:
				name = "AES256K (type 2)"
			default:
				name = fmt.Sprintf("type %d", typ)
			}
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	return strings.Join(names, ", ")
}

// plugin is a node plugin process in the guest.
type plugin struct {
	e       *env
	binary  string
	kind    string
	port    int
	pid     string
	logFile string
	node    csi.NodeClient
}

// startNodePlugin runs `cephcsi --type=kind --nodeserver` in the guest on
// TCP and waits until it answers. It is stopped when t ends.
func (e *env) startNodePlugin(t *testing.T, binary, kind string, port int) *plugin {
	t.Helper()
	p := &plugin{e: e, binary: binary, kind: kind, port: port, logFile: "/run/kt/cephcsi-" + kind + ".log"}
	conn, err := grpc.NewClient(fmt.Sprintf("%s:%d", e.guestAddr, port), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.node = csi.NewNodeClient(conn)
	t.Cleanup(func() {
		e.g.try(t, "kill "+p.pid+"; for i in $(seq 50); do kill -0 "+p.pid+" 2>/dev/null || exit 0; sleep 0.1; done; kill -9 "+p.pid)
		if t.Failed() {
			out, _ := e.g.try(t, "tail -40 "+p.logFile)
			t.Logf("%s node plugin log (tail):\n%s", kind, out)
		}
	})
	p.start(t)
	return p
}

func (p *plugin) start(t *testing.T) {
	t.Helper()
	p.pid = strings.TrimSpace(p.e.g.sh(t, fmt.Sprintf(
		"mkdir -p /run/kt && setsid %s --type=%s --nodeserver --nodeid=kt-guest --endpoint=tcp://%s:%d --configpath=%s --kmsconfigpath=%s --v=5 >>%s 2>&1 </dev/null & echo $!",
		quote(p.e.guestPath(p.binary)), p.kind, p.e.guestAddr, p.port, quote(p.e.guestPath(p.e.c.ConfigJSON)),
		quote(p.e.guestPath(p.e.kmsConfig)), p.logFile)))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info, err := p.node.NodeGetInfo(ctxT(t), &csi.NodeGetInfoRequest{})
		if err == nil {
			if info.GetNodeId() != "kt-guest" {
				t.Fatalf("%s node plugin says node ID %q", p.kind, info.GetNodeId())
			}
			return
		}
		if _, rc := p.e.g.try(t, "kill -0 "+p.pid); rc != 0 {
			out, _ := p.e.g.try(t, "tail -40 "+p.logFile)
			t.Fatalf("%s node plugin exited:\n%s", p.kind, out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s node plugin does not answer on %s:%d: %v", p.kind, p.e.guestAddr, p.port, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// crashAndRestart kills the plugin with SIGKILL (no chance to clean up) and
// starts it again: what it staged must still be found and torn down.
func (p *plugin) crashAndRestart(t *testing.T) {
	t.Helper()
	step(t, "SIGKILL and restart the node plugin", func() {
		p.e.g.sh(t, "kill -9 "+p.pid+"; while kill -0 "+p.pid+" 2>/dev/null; do sleep 0.05; done")
		p.start(t)
	})
}

// Writable filesystems of the guest: the overlay's upper layer (everything
// written to the root, /var/lib/kubelet included), the tmpfs mounts and
// /dev. The host's root below the overlay is the host's, read-only.
const guestWritable = "/.kt-rw /tmp /run /dev/shm /dev"

// keyFindings lists files on the guest's writable filesystems that hold one
// of the keys, are named like a keyring or key file, or have a keyring's
// "key = " line, and usable ceph keys left in the kernel's keyrings (krbd and
// mount.ceph lend the key to the kernel for one request only; a revoked,
// invalidated or dead key waiting for the keyring garbage collector cannot
// be read or used).
func (e *env) keyFindings(t testing.TB) string {
	t.Helper()
	// The keys travel base64-encoded so this command line does not match.
	enc := base64.StdEncoding.EncodeToString([]byte(strings.Join(e.keys, "\n")))
	out, _ := e.g.try(t, fmt.Sprintf(`
for k in $(echo %s | base64 -d); do grep -rlF -D skip -e "$k" %s 2>/dev/null; done
find %s -xdev \( -iname '*keyring*' -o -iname '*.key' -o -iname '*.secret' -o -iname 'secret*' \) -type f 2>/dev/null
grep -rlE -D skip '^[[:space:]]*key[[:space:]]*=' %s 2>/dev/null
awk '$8 == "ceph" && $2 !~ /[RDi]/ { print "kernel keyring: " $0 }' /proc/keys
true`, enc, guestWritable, guestWritable, guestWritable))
	return strings.TrimSpace(out)
}

// assertNoKeyFiles fails the test when the guest has a key on disk.
func (e *env) assertNoKeyFiles(t testing.TB) {
	t.Helper()
	step(t, "key-file check", func() {
		if f := e.keyFindings(t); f != "" {
			t.Errorf("key material on the guest's writable filesystems:\n%s", f)
		}
	})
}

// assertGuestClean checks that nothing is mapped or mounted in the guest.
func (e *env) assertGuestClean(t testing.TB) {
	t.Helper()
	out := e.g.sh(t, `ls /sys/bus/rbd/devices
for d in /sys/block/nbd*; do [ -e "$d/pid" ] && echo "$d connected (pid $(cat $d/pid))"; done
grep -E ' (ceph|ext4|xfs) ' /proc/mounts
true`)
	if s := strings.TrimSpace(out); s != "" {
		t.Errorf("the guest still has devices or mounts:\n%s", s)
	}
}

// TestKernelNode runs the node service in the guest through every kernel
// path, then checks that the guest is left clean.
func TestKernelNode(t *testing.T) {
	e := setup(t)
	t.Run("key-check-finds-planted-key", e.testKeyCheckWorks)
	t.Run("krbd-ext4", e.testKRBDFilesystem)
	t.Run("krbd-block", e.testKRBDBlock)
	t.Run("rbd-nbd-ext4", e.testNBDFilesystem)
	t.Run("krbd-xfs-restore-from-snapshot", e.testRestoreFromSnapshot)
	t.Run("krbd-ext4-readonly-from-snapshot", e.testReadOnlyFromSnapshot)
	t.Run("cephfs-kernel", e.testCephFSKernel)
	t.Run("cephfs-fscrypt-snapshot-restore", e.testCephFSFscrypt)
	t.Run("cephfs-fscrypt-metadata-kms", e.testCephFSFscryptMetadataKMS)
	t.Run("cephfs-fscrypt-tool-layout-opens", e.testCephFSFscryptToolLayout)
	t.Run("krbd-luks-ext4-restore-expand", e.testLUKSFilesystem)
	t.Run("rbd-nbd-luks-block-clone", e.testLUKSBlockClone)
	t.Run("luks-ceph-csi-layout-opens", e.testCephCSILayout)
	step(t, "guest left clean", func() { e.assertGuestClean(t) })
	e.assertNoKeyFiles(t)
	// krbd lends the key to the kernel's keyring for each map request; its
	// fallback (the key inside the sysfs request) must not be needed here.
	// Both messages are logged at --v=2; "image mapped" shows the log has them.
	log := e.g.sh(t, "cat "+e.rbdPlugin.logFile)
	if !strings.Contains(log, "image mapped") {
		t.Errorf("the rbd node plugin's log has no \"image mapped\" line at --v=5")
	}
	if strings.Contains(log, "kernel keyring unavailable") {
		t.Errorf("krbd passed the key in the map request instead of lending it to the kernel keyring")
	}
}

// testKeyCheckWorks shows that the key-file check finds a key written to the
// guest's disk, so that its silence elsewhere means something.
func (e *env) testKeyCheckWorks(t *testing.T) {
	if f := e.keyFindings(t); f != "" {
		t.Fatalf("key material in the guest before any volume was staged:\n%s", f)
	}
	enc := base64.StdEncoding.EncodeToString([]byte(e.keys[1]))
	e.g.sh(t, "mkdir -p /var/lib/kt-probe && echo "+enc+" | base64 -d > /var/lib/kt-probe/blob")
	defer e.g.sh(t, "rm -rf /var/lib/kt-probe")
	if f := e.keyFindings(t); !strings.Contains(f, "/var/lib/kt-probe/blob") {
		t.Fatalf("the check did not find a key planted in /var/lib/kt-probe/blob; it reported:\n%s", f)
	}
}
