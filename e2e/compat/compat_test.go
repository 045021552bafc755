//go:build compat

// Package compat runs the cephcsi binary, built against the project's Ceph
// release, against a cluster of an older release (Reef, Pacific) that was
// made by that release's own tools, with the cephx keys it generated.
//
// The cluster is started and stopped by scripts/compat-test.sh (make
// test-compat); this test only attaches to it: it never starts, restarts or
// reconfigures a daemon. Each operation goes through the real binary over
// its CSI socket, and its effect is checked on the cluster as admin through
// go-ceph. The cluster is private to the run, so "nothing is left" is
// checked on the whole pools and subvolume group, not only on this test's
// names.
//
// Environment (set by the script):
//
//	COMPAT_RELEASE       the cluster's release name (reef, pacific)
//	COMPAT_CEPH_VERSION  the version every daemon must report (18.2.7)
//	COMPAT_CLUSTER_DIR   the cluster's directory (scripts/ceph-cluster.sh)
//	COMPAT_RESULTS       file the result rows are appended to (optional)
//	COMPAT_LOG_DIR       where the driver logs are kept (default _output/compat)
//	CEPHCSI_BINARY       the driver (default _output/cephcsi)
package compat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// callTimeout bounds one operation, Aborted retries included.
const callTimeout = 4 * time.Minute

// cluster is the running compat cluster as the test sees it.
type cluster struct {
	release, version string
	dir, conf        string
	configJSON       string
	clusterID        string
	vars             map[string]string
	admin            *rados.Conn
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterErr  error
)

// requireCluster attaches to the cluster of COMPAT_CLUSTER_DIR once per run.
func requireCluster(t *testing.T) *cluster {
	t.Helper()
	clusterOnce.Do(func() { theCluster, clusterErr = attach() })
	if clusterErr != nil {
		t.Fatalf("compat cluster: %v", clusterErr)
	}
	return theCluster
}

func attach() (*cluster, error) {
	c := &cluster{release: os.Getenv("COMPAT_RELEASE"), version: os.Getenv("COMPAT_CEPH_VERSION"),
		dir: os.Getenv("COMPAT_CLUSTER_DIR")}
	if c.release == "" || c.version == "" || c.dir == "" {
		return nil, errors.New("COMPAT_RELEASE, COMPAT_CEPH_VERSION and COMPAT_CLUSTER_DIR must be set (run make test-compat)")
	}
	// `env` only reads the cluster's files; it starts nothing.
	out, err := exec.Command(filepath.Join(testutil.RepoRoot(), "scripts", "ceph-cluster.sh"), "env", c.dir).Output()
	if err != nil {
		return nil, fmt.Errorf("ceph-cluster.sh env %s: %w", c.dir, err)
	}
	c.vars = map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			c.vars[k] = v
		}
	}
	c.conf, c.configJSON, c.clusterID = c.vars["CEPH_CONF_FILE"], c.vars["CEPH_CSI_CONFIG"], c.vars["CEPH_CLUSTER_ID"]
	conn, err := rados.NewConnWithUser("admin")
	if err != nil {
		return nil, err
	}
	if err := conn.ReadConfigFile(c.conf); err != nil {
		return nil, err
	}
	if err := conn.SetConfigOption("keyring", c.vars["CEPH_ADMIN_KEYRING"]); err != nil {
		return nil, err
	}
	if err := conn.Connect(); err != nil {
		return nil, fmt.Errorf("connecting as admin: %w", err)
	}
	c.admin = conn
	return c, nil
}

// keys are the cephx keys of the cluster's CSI users, for the log checks.
func (c *cluster) keys() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"CEPH_RBD_PROVISIONER_KEY", "CEPH_RBD_NODE_KEY", "CEPH_FS_PROVISIONER_KEY", "CEPH_FS_NODE_KEY"} {
		m[k] = c.vars[k]
	}
	return m
}

// redact replaces any of the cluster's keys in s.
func (c *cluster) redact(s string) string {
	for name, k := range c.keys() {
		if k != "" {
			s = strings.ReplaceAll(s, k, "<"+name+">")
		}
	}
	return s
}

func (c *cluster) ioctx(t *testing.T, pool, ns string) *rados.IOContext {
	t.Helper()
	io, err := c.admin.OpenIOContext(pool)
	if err != nil {
		t.Fatalf("open pool %s: %v", pool, err)
	}
	io.SetNamespace(ns)
	t.Cleanup(io.Destroy)
	return io
}

// TestCompat checks the cluster, then runs the RBD and the CephFS
// operations against it (in this order, which is the table's).
func TestCompat(t *testing.T) {
	c := requireCluster(t)
	q := newSequence(t, c, "cluster")
	q.run("release and key type", func(s *step) { checkRelease(s, c) })
	if q.broken != "" {
		t.Fatal("the cluster is not the release under test; nothing else is run")
	}
	t.Run("rbd", func(t *testing.T) { testRBD(t, c) })
	t.Run("cephfs", func(t *testing.T) { testCephFS(t, c) })
}

// checkRelease checks that the cluster is the release the run claims, and
// that its CSI users have the keys that release makes: the test must not
// pass against the wrong cluster, or with keys from a newer one.
func checkRelease(s *step, c *cluster) {
	out, _, err := c.admin.MonCommand([]byte(`{"prefix":"versions","format":"json"}`))
	if err != nil {
		s.fatalf("ceph versions: %v", err)
	}
	var versions map[string]map[string]int
	if err := json.Unmarshal(out, &versions); err != nil {
		s.fatalf("ceph versions: %v: %s", err, out)
	}
	for _, daemon := range []string{"mon", "mgr", "osd", "mds"} {
		if len(versions[daemon]) == 0 {
			s.errorf("no %s reports a version", daemon)
		}
		for v := range versions[daemon] {
			if !strings.HasPrefix(v, "ceph version "+c.version+" ") || !strings.Contains(v, " "+c.release+" ") {
				s.errorf("%s runs %q, not Ceph %s (%s)", daemon, v, c.version, c.release)
			}
		}
	}
	// A key is base64 of a little-endian 16-bit crypto type, then the
	// creation time and the secret. Type 1 (AES, "AQ...") is what releases
	// before Tentacle generate.
	for name, k := range c.keys() {
		raw, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(raw) < 2 {
			s.errorf("%s is not a cephx key", name)
			continue
		}
		if typ := binary.LittleEndian.Uint16(raw); typ != 1 {
			s.errorf("%s has crypto type %d, want 1 (AES) as %s makes", name, typ, c.release)
		}
	}
	s.Logf("cluster %s: %s", c.dir, strings.Join(mapKeys(versions["overall"]), ", "))
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// driver is the cephcsi binary serving one type on a unix socket.
type driver struct {
	ctl  csi.ControllerClient
	node csi.NodeClient
	dir  string // private temporary directory: socket, plugin and staging dirs

	// What the operations made, for the later ones and for the cleanup of
	// a failed run.
	volumes   []string
	snapshots []string
}

// createVolume makes a volume of the class (params, secrets) through
// retry, timed; fsType ext4, single-node writer.
func (d *driver) createVolume(s *step, name string, size int64, src *csi.VolumeContentSource,
	params, secrets map[string]string) *csi.Volume {
	s.Helper()
	var vol *csi.Volume
	var err error
	s.timed(func() {
		err = retry(func(ctx context.Context) error {
			resp, err := d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCaps(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params, Secrets: secrets,
				VolumeContentSource: src})
			vol = resp.GetVolume()
			return err
		})
	})
	if err != nil {
		s.fatalf("CreateVolume %s: %v", name, err)
	}
	d.volumes = append(d.volumes, vol.GetVolumeId())
	if vol.GetCapacityBytes() != size {
		s.errorf("CreateVolume %s: capacity %d, want %d", name, vol.GetCapacityBytes(), size)
	}
	return vol
}

// createSnapshot snapshots volume source through retry, timed.
func (d *driver) createSnapshot(s *step, name, source, clusterID string, secrets map[string]string) *csi.Snapshot {
	s.Helper()
	var snap *csi.Snapshot
	var err error
	s.timed(func() {
		err = retry(func(ctx context.Context) error {
			resp, err := d.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source,
				Secrets: secrets, Parameters: map[string]string{"clusterID": clusterID}})
			snap = resp.GetSnapshot()
			return err
		})
	})
	if err != nil {
		s.fatalf("CreateSnapshot: %v", err)
	}
	d.snapshots = append(d.snapshots, snap.GetSnapshotId())
	return snap
}

// expandVolume grows volume id to size through retry, timed.
func (d *driver) expandVolume(s *step, id string, size int64, secrets map[string]string) *csi.ControllerExpandVolumeResponse {
	s.Helper()
	var resp *csi.ControllerExpandVolumeResponse
	var err error
	s.timed(func() {
		err = retry(func(ctx context.Context) error {
			resp, err = d.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
				CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Secrets: secrets, VolumeCapability: mountCaps()[0]})
			return err
		})
	})
	if err != nil {
		s.fatalf("ControllerExpandVolume: %v", err)
	}
	return resp
}

// deleteSnapshot and deleteVolume delete through retry and end the step
// when that fails.
func (d *driver) deleteSnapshot(s *step, id string, secrets map[string]string) {
	s.Helper()
	if err := retry(func(ctx context.Context) error {
		_, err := d.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: secrets})
		return err
	}); err != nil {
		s.fatalf("DeleteSnapshot: %v", err)
	}
}

func (d *driver) deleteVolume(s *step, id string, secrets map[string]string) {
	s.Helper()
	if err := retry(func(ctx context.Context) error {
		_, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets})
		return err
	}); err != nil {
		s.fatalf("DeleteVolume %s: %v", id, err)
	}
}

// deleteOnFailure deletes, when the test has failed, every snapshot and
// then every volume the driver made, newest first (deletes are idempotent,
// so it repeats those that went already).
func (d *driver) deleteOnFailure(t *testing.T, secrets map[string]string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		for i := len(d.snapshots) - 1; i >= 0; i-- {
			_, _ = d.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: d.snapshots[i], Secrets: secrets})
		}
		for i := len(d.volumes) - 1; i >= 0; i-- {
			_, _ = d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: d.volumes[i], Secrets: secrets})
		}
	})
}

// startDriver runs the binary with the controller and node services. When
// the test ends it must still be running (it never crashed), exit cleanly on
// SIGTERM and have logged no key.
func startDriver(t *testing.T, c *cluster, kind string) *driver {
	t.Helper()
	bin := os.Getenv("CEPHCSI_BINARY")
	if bin == "" {
		bin = filepath.Join(testutil.RepoRoot(), "_output", "cephcsi")
	}
	logDir := os.Getenv("COMPAT_LOG_DIR")
	if logDir == "" {
		logDir = filepath.Join(testutil.RepoRoot(), "_output", "compat")
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "csicompat") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	logPath := filepath.Join(logDir, c.release+"-"+kind+"-driver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--type="+kind, "--controllerserver", "--nodeserver", "--nodeid=compat",
		"--endpoint=unix://"+sock, "--configpath="+c.configJSON,
		"--pluginpath="+filepath.Join(dir, "plugins"), "--stagingpath="+filepath.Join(dir, "staging"),
		"--clonewait=60s", "--v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A test killed on timeout runs no cleanup: the driver goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-exited:
			t.Errorf("the %s driver exited during the test (%v); see %s", kind, err, logPath)
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("the %s driver did not exit cleanly on SIGTERM: %v", kind, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("the %s driver did not stop on SIGTERM; killing it", kind)
				_ = cmd.Process.Kill()
				t.Logf("the killed %s driver: %v", kind, <-exited)
			}
		}
		_ = logFile.Close()
		if data, err := os.ReadFile(logPath); err != nil {
			t.Errorf("reading the driver log: %v", err)
		} else {
			for name, k := range c.keys() {
				if k != "" && bytes.Contains(data, []byte(k)) {
					t.Errorf("the %s driver log contains the value of %s", kind, name)
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing the driver's directory (its socket, plugin and staging paths): %v", err)
		}
	})
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("the %s driver exited before serving (%v):\n%s", kind, werr, c.redact(string(out)))
		case <-ctx.Done():
			t.Fatalf("the %s driver did not answer on %s: %v", kind, sock, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return &driver{ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), dir: dir}
}

// retry calls fn until it answers anything but Aborted, as the CSI sidecars
// do, within callTimeout.
func retry(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	for {
		err := fn(ctx)
		if status.Code(err) != codes.Aborted {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still Aborted after %v: %w", callTimeout, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkJournal checks the journal of one volume or snapshot: the directory
// maps the request name to the UUID, the entry object names it back.
func checkJournal(s *step, io *rados.IOContext, kind, name, uuid, imageName string) {
	dir, key, entry, nameKey := "csi.volumes.default", "csi.volume."+name, "csi.volume."+uuid, "csi.volname"
	if kind == "snapshot" {
		dir, key, entry, nameKey = "csi.snaps.default", "csi.snap."+name, "csi.snap."+uuid, "csi.snapname"
	}
	if got := testutil.Omap(s.T, io, dir)[key]; got != uuid {
		s.errorf("journal %s[%s] = %q, want %q", dir, key, got, uuid)
	}
	e := testutil.Omap(s.T, io, entry)
	if e[nameKey] != name || e["csi.imagename"] != imageName {
		s.errorf("journal %s = %v, want %s=%s and csi.imagename=%s", entry, e, nameKey, name, imageName)
	}
}

// journalLeftovers lists the journal keys and objects left in io: after
// every volume and snapshot is deleted the directories must be empty and no
// entry object may remain.
func journalLeftovers(t *testing.T, io *rados.IOContext, where string) []string {
	t.Helper()
	var left []string
	for _, dir := range []string{"csi.volumes.default", "csi.snaps.default"} {
		for k := range testutil.Omap(t, io, dir) {
			left = append(left, fmt.Sprintf("journal key %s %s/%s", where, dir, k))
		}
	}
	if err := io.ListObjects(func(oid string) {
		if strings.HasPrefix(oid, "csi.") && oid != "csi.volumes.default" && oid != "csi.snaps.default" {
			left = append(left, fmt.Sprintf("object %s %s", where, oid))
		}
	}); err != nil {
		left = append(left, fmt.Sprintf("listing objects of %s: %v", where, err))
	}
	return left
}
