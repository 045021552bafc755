//go:build integration

package csiaddons_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	fencepb "github.com/csi-addons/spec/lib/go/fence"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/testutil"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run runs a command and returns its standard output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// cephAdmin is the ceph CLI as client.admin of c, without an admin socket
// (the cluster's own processes hold client.admin's).
func cephAdmin(t *testing.T, c *testutil.Cluster, args ...string) string {
	t.Helper()
	return run(t, "ceph", append([]string{"--conf", c.Conf, "--name", "client.admin", "--keyring", filepath.Join(c.Dir, "keyring"),
		"--admin-socket="}, args...)...)
}

// testNet is a network namespace of the test joined to this one by a veth
// pair: the host side holds the cluster's address, the namespace a client
// address in another half of the same /24.
type testNet struct {
	ns, host, client string
}

func newTestNet(t *testing.T) testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	n := os.Getpid()%200 + 20
	tn := testNet{ns: fmt.Sprintf("caddon-fence-%d", n), host: fmt.Sprintf("10.96.%d.1", n), client: fmt.Sprintf("10.96.%d.130", n)}
	hostIf, nsIf := fmt.Sprintf("caddonh%d", n), fmt.Sprintf("caddonn%d", n)
	run(t, "ip", "netns", "add", tn.ns)
	// Deleting the namespace deletes the veth pair with it.
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", tn.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", tn.ns, err, out)
		}
	})
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", tn.ns)
	run(t, "ip", "addr", "add", tn.host+"/24", "dev", hostIf)
	run(t, "ip", "link", "set", hostIf, "up")
	run(t, "ip", "-n", tn.ns, "addr", "add", tn.client+"/24", "dev", nsIf)
	run(t, "ip", "-n", tn.ns, "link", "set", nsIf, "up")
	run(t, "ip", "-n", tn.ns, "link", "set", "lo", "up")
	return tn
}

// radosIn runs the rados CLI as client.admin from the namespace: a client
// of its own, seen by the cluster at the namespace's address. It returns
// the standard output, and the error output in err.
func (tn testNet) radosIn(c *testutil.Cluster, stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", tn.ns, "rados", "--conf", c.Conf, "--name", "client.admin",
		"--keyring", filepath.Join(c.Dir, "keyring"), "--admin-socket=", "--client_mount_timeout=20"}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func blocklist(t *testing.T, c *testutil.Cluster) string {
	t.Helper()
	return cephAdmin(t, c, "osd", "blocklist", "ls")
}

// A fenced CIDR is a range entry of the OSD blocklist, and a client from it
// loses its I/O while a client outside it keeps working; unfencing gives
// the network back. Repeated calls change nothing.
func TestFenceCutsOffAClientNetwork(t *testing.T) {
	tn := newTestNet(t)
	dir, err := os.MkdirTemp("", "caddon-ceph")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := testutil.StartPrivateCluster(t, dir, "CEPH_BIND_ADDR="+tn.host, "CEPH_MON_PORT=13799", "CEPH_MON_V2_PORT=13800")
	d := testutil.StartDriver(t, c, "rbd", func(o *config.Options) { o.EnableFencing = true })
	fc := fencepb.NewFenceControllerClient(d.Addons)
	params := map[string]string{"clusterID": c.ClusterID}
	fenced := tn.client[:strings.LastIndex(tn.client, ".")] + ".128/25"
	cidrs := []*fencepb.CIDR{{Cidr: fenced}}

	payload := []byte("written from " + tn.client)
	if out, err := tn.radosIn(c, payload, "-p", "rbd", "put", "caddon-before", "-"); err != nil {
		t.Fatalf("the namespace's client cannot write before the fence: %v\n%s", err, out)
	}

	// The node reports the address it reaches the cluster from.
	clients, err := fc.GetFenceClients(ctxT(t), &fencepb.GetFenceClientsRequest{Parameters: params, Secrets: c.RBDSecrets()})
	if err != nil {
		t.Fatalf("GetFenceClients: %v", err)
	}
	fsid := strings.TrimSpace(cephAdmin(t, c, "fsid"))
	if cl := clients.GetClients(); len(cl) != 1 || cl[0].GetId() != fsid || len(cl[0].GetAddresses()) != 1 ||
		cl[0].GetAddresses()[0].GetCidr() != tn.host+"/32" {
		t.Errorf("GetFenceClients = %v; want fsid %s and %s/32", clients, fsid, tn.host)
	}

	for i := range 2 {
		if _, err := fc.FenceClusterNetwork(ctxT(t), &fencepb.FenceClusterNetworkRequest{Parameters: params,
			Secrets: c.RBDSecrets(), Cidrs: cidrs}); err != nil {
			t.Fatalf("FenceClusterNetwork #%d: %v", i+1, err)
		}
	}
	t.Cleanup(func() {
		// Whatever happens, the fence does not outlive the test.
		_, _ = fc.UnfenceClusterNetwork(context.Background(), &fencepb.UnfenceClusterNetworkRequest{Parameters: params,
			Secrets: c.RBDSecrets(), Cidrs: cidrs})
	})
	entry := "cidr:" + strings.Replace(fenced, "/", ":0/", 1)
	if bl := blocklist(t, c); strings.Count(bl, entry) != 1 {
		t.Fatalf("osd blocklist ls lacks %s once:\n%s", entry, bl)
	}
	list, err := fc.ListClusterFence(ctxT(t), &fencepb.ListClusterFenceRequest{Parameters: params, Secrets: c.RBDSecrets()})
	if err != nil || !slices.ContainsFunc(list.GetCidrs(), func(c *fencepb.CIDR) bool { return c.GetCidr() == fenced }) {
		t.Errorf("ListClusterFence = %v, %v; want %s", list, err, fenced)
	}

	// A client from the fenced network: the OSDs refuse it.
	begin := time.Now()
	out, err := tn.radosIn(c, payload, "-p", "rbd", "put", "caddon-fenced", "-")
	if err == nil {
		t.Fatalf("a client of the fenced network wrote:\n%s", out)
	}
	// EBLOCKLISTED is ESHUTDOWN (108).
	if !strings.Contains(err.Error(), "(108)") {
		t.Errorf("the fenced write failed otherwise than blocklisted: %v", err)
	}
	t.Logf("fenced client refused after %s: %v", time.Since(begin).Round(time.Millisecond), err)
	if out, err := tn.radosIn(c, nil, "-p", "rbd", "get", "caddon-before", "-"); err == nil {
		t.Errorf("a client of the fenced network read:\n%s", out)
	}
	// The driver, outside the fence, works on: a volume comes and goes.
	vol, err := d.Controller.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: "caddon-fence-pvc",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{testutil.FSCap("ext4")},
		Parameters: map[string]string{"clusterID": c.ClusterID, "pool": "rbd"}, Secrets: c.RBDSecrets()})
	if err != nil {
		t.Fatalf("CreateVolume outside the fence: %v", err)
	}
	if _, err := d.Controller.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(),
		Secrets: c.RBDSecrets()}); err != nil {
		t.Fatalf("DeleteVolume outside the fence: %v", err)
	}

	for i := range 2 {
		if _, err := fc.UnfenceClusterNetwork(ctxT(t), &fencepb.UnfenceClusterNetworkRequest{Parameters: params,
			Secrets: c.RBDSecrets(), Cidrs: cidrs}); err != nil {
			t.Fatalf("UnfenceClusterNetwork #%d: %v", i+1, err)
		}
	}
	if bl := blocklist(t, c); strings.Contains(bl, entry) {
		t.Fatalf("osd blocklist ls keeps %s after unfencing:\n%s", entry, bl)
	}
	if out, err := tn.radosIn(c, payload, "-p", "rbd", "put", "caddon-after", "-"); err != nil {
		t.Fatalf("the namespace's client cannot write after unfencing: %v\n%s", err, out)
	}
	if out, err := tn.radosIn(c, nil, "-p", "rbd", "get", "caddon-before", "-"); err != nil || out != string(payload) {
		t.Fatalf("read back after unfencing: %v\n%q", err, out)
	}
}
