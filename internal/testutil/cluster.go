// Package testutil starts the local Ceph cluster and the driver for
// integration tests, and gives the tests an admin view of the cluster to
// check what the driver did.
package testutil

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/driver"
)

// Cluster describes the running local cluster.
type Cluster struct {
	Dir        string
	Conf       string
	ConfigJSON string
	ClusterID  string
	Monitors   string
	vars       map[string]string
	admin      *rados.Conn
}

// Var returns a variable printed by `ceph-cluster.sh env` (keys included).
func (c *Cluster) Var(name string) string { return c.vars[name] }

// RBDSecrets are the provisioner credentials as the sidecars pass them.
func (c *Cluster) RBDSecrets() map[string]string {
	return map[string]string{"userID": c.vars["CEPH_RBD_PROVISIONER_ID"], "userKey": c.vars["CEPH_RBD_PROVISIONER_KEY"]}
}

// RBDNodeSecrets are the node credentials.
func (c *Cluster) RBDNodeSecrets() map[string]string {
	return map[string]string{"userID": c.vars["CEPH_RBD_NODE_ID"], "userKey": c.vars["CEPH_RBD_NODE_KEY"]}
}

// CephFSSecrets are the CephFS provisioner credentials.
func (c *Cluster) CephFSSecrets() map[string]string {
	return map[string]string{"adminID": c.vars["CEPH_FS_PROVISIONER_ID"], "adminKey": c.vars["CEPH_FS_PROVISIONER_KEY"]}
}

// CephFSNodeSecrets are the CephFS node credentials.
func (c *Cluster) CephFSNodeSecrets() map[string]string {
	return map[string]string{"userID": c.vars["CEPH_FS_NODE_ID"], "userKey": c.vars["CEPH_FS_NODE_KEY"]}
}

// Admin returns a client.admin connection for checking the cluster.
func (c *Cluster) Admin() *rados.Conn { return c.admin }

// Close ends the admin connection (of a cluster from LoadCluster; the
// shared one of RequireCluster stays open for the test process).
func (c *Cluster) Close() { c.admin.Shutdown() }

// RepoRoot finds the repository root from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	once    sync.Once
	shared  *Cluster
	initErr error
)

// RequireCluster starts the local cluster when it is not running (in
// $CEPHCSI_CLUSTER_DIR, default _output/ceph) and returns it. The cluster is
// left running for the next test package.
func RequireCluster(t testing.TB) *Cluster {
	t.Helper()
	once.Do(func() {
		dir := os.Getenv("CEPHCSI_CLUSTER_DIR")
		if dir == "" {
			dir = filepath.Join(RepoRoot(), "_output", "ceph")
		}
		shared, initErr = startCluster(dir, nil)
	})
	if initErr != nil {
		t.Fatalf("local Ceph cluster: %v", initErr)
	}
	return shared
}

// StartPrivateCluster starts a cluster of the test's own in dir, with env
// added to the script's environment (CEPH_BIND_ADDR, CEPH_MON_PORT...),
// and purges it when the test ends. It takes some 30 seconds.
func StartPrivateCluster(t testing.TB, dir string, env ...string) *Cluster {
	t.Helper()
	script := filepath.Join(RepoRoot(), "scripts", "ceph-cluster.sh")
	t.Cleanup(func() {
		cmd := exec.Command(script, "purge", dir)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s purge %s: %v\n%s", script, dir, err, out)
		}
	})
	c, err := startCluster(dir, env)
	if err != nil {
		t.Fatalf("private Ceph cluster in %s: %v", dir, err)
	}
	t.Cleanup(func() { c.admin.Shutdown() })
	return c
}

func startCluster(dir string, env []string) (*Cluster, error) {
	script := filepath.Join(RepoRoot(), "scripts", "ceph-cluster.sh")
	cmd := exec.Command(script, "start", dir)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s start %s: %w", script, dir, err)
	}
	return LoadCluster(script, dir, env...)
}

// LoadCluster describes a running cluster by what `script env dir` prints
// (scripts/ceph-cluster.sh or a script printing the same variables, run with
// env added to its environment) and connects to it as admin. Admin calls
// give up after a minute, so that a test against a cluster it breaks on
// purpose fails instead of hanging.
func LoadCluster(script, dir string, env ...string) (*Cluster, error) {
	envCmd := exec.Command(script, "env", dir)
	envCmd.Env = append(os.Environ(), env...)
	out, err := envCmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s env: %w", script, err)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	c := &Cluster{Dir: dir, Conf: vars["CEPH_CONF_FILE"], ConfigJSON: vars["CEPH_CSI_CONFIG"],
		ClusterID: vars["CEPH_CLUSTER_ID"], Monitors: vars["CEPH_MONITORS"], vars: vars}
	conn, err := rados.NewConnWithUser("admin")
	if err != nil {
		return nil, err
	}
	if err := conn.ReadConfigFile(c.Conf); err != nil {
		return nil, err
	}
	for _, kv := range [][2]string{{"keyring", vars["CEPH_ADMIN_KEYRING"]},
		{"rados_osd_op_timeout", "60"}, {"rados_mon_op_timeout", "60"}, {"client_mount_timeout", "60"}} {
		if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	if err := conn.Connect(); err != nil {
		return nil, fmt.Errorf("connecting as admin: %w", err)
	}
	c.admin = conn
	return c, nil
}

// IOContext opens pool as admin; the test closes it with t.Cleanup.
func (c *Cluster) IOContext(t testing.TB, pool string) *rados.IOContext {
	t.Helper()
	io, err := c.admin.OpenIOContext(pool)
	if err != nil {
		t.Fatalf("open pool %s: %v", pool, err)
	}
	t.Cleanup(io.Destroy)
	return io
}

// PrivateRBDPool creates an RBD pool of the test's own (for what the shared
// pools' statistics cannot show while other tests use them) and removes it
// when the test ends.
func (c *Cluster) PrivateRBDPool(t testing.TB, name string) {
	t.Helper()
	mon := func(cmd map[string]any) error {
		b, err := json.Marshal(cmd)
		if err != nil {
			return err
		}
		_, info, err := c.admin.MonCommand(b)
		if err != nil {
			return fmt.Errorf("%v: %w (%s)", cmd["prefix"], err, info)
		}
		return nil
	}
	if err := mon(map[string]any{"prefix": "osd pool create", "pool": name, "pg_num": 8}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mon(map[string]any{"prefix": "osd pool rm", "pool": name, "pool2": name,
			"yes_i_really_really_mean_it": true}); err != nil {
			t.Errorf("removing pool %s: %v", name, err)
		}
	})
	if err := mon(map[string]any{"prefix": "osd pool application enable", "pool": name, "app": "rbd"}); err != nil {
		t.Fatal(err)
	}
}

// Driver is a driver served in-process on a real unix socket.
type Driver struct {
	Conn       *grpc.ClientConn
	Controller csi.ControllerClient
	Node       csi.NodeClient
	Identity   csi.IdentityClient
	Socket     string
	// Addons is a connection to the CSI-Addons socket, AddonsSocket.
	Addons       *grpc.ClientConn
	AddonsSocket string
}

// StartDriver serves a driver of kind ("rbd" or "cephfs") with the
// controller and node services, and the CSI-Addons services on a socket of
// their own, until the test ends. tweak may adjust the options before
// start.
func StartDriver(t testing.TB, c *Cluster, kind string, tweak func(*config.Options)) *Driver {
	t.Helper()
	dir := shortTempDir(t)
	sock, addonsSock := filepath.Join(dir, "csi.sock"), filepath.Join(dir, "addons.sock")
	opts := &config.Options{}
	fs := flagSet()
	opts.Register(fs)
	if err := fs.Parse([]string{"--type=" + kind, "--controllerserver", "--nodeserver", "--nodeid=test-node",
		"--endpoint=unix://" + sock, "--csi-addons-endpoint=unix://" + addonsSock, "--configpath=" + c.ConfigJSON}); err != nil {
		t.Fatal(err)
	}
	opts.PluginPath = filepath.Join(shortTempDir(t), "plugins")
	if tweak != nil {
		tweak(opts)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- driver.Serve(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver stopped with %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("driver did not stop")
		}
	})
	waitSocket(t, sock, done)
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d := &Driver{Conn: conn, Socket: sock, Controller: csi.NewControllerClient(conn),
		Node: csi.NewNodeClient(conn), Identity: csi.NewIdentityClient(conn)}
	if opts.CSIAddonsEndpoint == "unix://"+addonsSock {
		waitSocket(t, addonsSock, done)
		if d.Addons, err = grpc.NewClient("unix:"+addonsSock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Addons.Close() })
		d.AddonsSocket = addonsSock
	}
	return d
}

// waitSocket waits until sock accepts connections, or the driver exits.
func waitSocket(t testing.TB, sock string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The socket file exists a moment before it listens (bind, then
		// listen): wait until a connection goes through.
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("driver exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver socket %s did not appear", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortTempDir returns a temporary directory with a short path: unix socket
// paths are limited to 108 bytes, which t.TempDir() can exceed.
func shortTempDir(t testing.TB) string {
	d, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// FSCap is a single-node-writer filesystem capability with fsType.
func FSCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// BlockCap is a single-node-writer raw block capability.
func BlockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// FromSnapshot is the content source of a restore from snapshot id.
func FromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// FromVolume is the content source of a PVC clone of volume id.
func FromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}
