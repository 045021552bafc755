package mapper

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/keyexec"
)

// testKey is shaped like a cephx key but is none; it is assembled at run
// time so that no key-shaped literal sits in the repository.
var testKey = "AQBp" + "bWFnaW5lZCBrZXkgZm9yIHRlc3RzIG9ubHk="

func testSpec() Spec {
	return Spec{Monitors: []string{"127.0.0.1:6789"}, Pool: "rbd", Namespace: "ns1", Image: "csi-vol-1",
		UserID: "csi-rbd-node", Key: testKey}
}

// fakeRunner answers commands from a script and records them.
type fakeRunner struct {
	mu     sync.Mutex
	calls  []keyexec.Command
	answer func(c keyexec.Command) (keyexec.Result, error)
}

func (f *fakeRunner) Run(_ context.Context, c keyexec.Command) (keyexec.Result, error) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	if f.answer == nil {
		return keyexec.Result{}, nil
	}
	return f.answer(c)
}

func (f *fakeRunner) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		out = append(out, c.String())
	}
	return out
}

func TestKindOfAndOptionsFor(t *testing.T) {
	for in, want := range map[string]string{"": KindKRBD, "rbd": KindKRBD, "krbd": KindKRBD, "rbd-nbd": KindNBD, "rbd-fuse": KindFuse} {
		if got, err := KindOf(in); err != nil || got != want {
			t.Errorf("KindOf(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := KindOf("iscsi"); !errors.Is(err, ErrInvalidOption) || csierr.Code(err) != codes.InvalidArgument {
		t.Errorf("KindOf(iscsi) = %v", err)
	}
	value := "krbd:queue_depth=128,lock_on_read;nbd:try-netlink,reattach-timeout=180;fuse:allow_root"
	for kind, want := range map[string]string{KindKRBD: "queue_depth=128,lock_on_read", KindNBD: "try-netlink,reattach-timeout=180", KindFuse: "allow_root"} {
		if got, err := OptionsFor(value, kind); err != nil || got != want {
			t.Errorf("OptionsFor(%s) = %q, %v; want %q", kind, got, err, want)
		}
	}
	// A bare list is krbd's, as in ceph-csi.
	if got, _ := OptionsFor("alloc_size=65536", KindKRBD); got != "alloc_size=65536" {
		t.Errorf("bare options for krbd = %q", got)
	}
	if got, _ := OptionsFor("alloc_size=65536", KindNBD); got != "" {
		t.Errorf("bare options for nbd = %q, want none", got)
	}
	for _, bad := range []string{"zfs:foo", "krbd:a:b"} {
		if _, err := OptionsFor(bad, KindKRBD); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("OptionsFor(%q) = %v, want ErrInvalidOption", bad, err)
		}
	}
}

func TestSpecNeverPrintsTheKey(t *testing.T) {
	s := testSpec()
	for _, out := range []string{s.String(), s.GoString()} {
		if strings.Contains(out, testKey) {
			t.Errorf("%q shows the key", out)
		}
	}
	if s.String() != "rbd/ns1/csi-vol-1" {
		t.Errorf("String() = %q", s.String())
	}
}

// fakeKernel stands in for /sys/bus/rbd and /dev.
type fakeKernel struct {
	t          *testing.T
	sysfs, dev string
	mu         sync.Mutex
	writes     []string // "path-relative-to-sysfs: data"
	writeErr   error
	block      chan struct{}
	nextID     int
}

func newFakeKernel(t *testing.T) *fakeKernel {
	k := &fakeKernel{t: t, sysfs: t.TempDir(), dev: t.TempDir()}
	bus := filepath.Join(k.sysfs, "bus", "rbd")
	for _, f := range []string{"add", "remove", "add_single_major", "remove_single_major"} {
		mustWrite(t, filepath.Join(bus, f), "")
	}
	if err := os.MkdirAll(filepath.Join(bus, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// write implements KRBD.Write like the rbd module: an add request creates
// a device, a remove request deletes it.
func (k *fakeKernel) write(path string, data []byte) error {
	if k.block != nil {
		<-k.block
		return unix.ETIMEDOUT // the kernel gives up in the end
	}
	rel, _ := filepath.Rel(k.sysfs, path)
	k.mu.Lock()
	k.writes = append(k.writes, rel+": "+string(data))
	k.mu.Unlock()
	if k.writeErr != nil {
		return k.writeErr
	}
	f := strings.Fields(string(data))
	switch filepath.Base(path) {
	case "add_single_major":
		id := k.nextID
		k.nextID++
		dir := filepath.Join(k.sysfs, "bus", "rbd", "devices", itoa(id))
		ns := ""
		for _, o := range strings.Split(f[1], ",") {
			if v, ok := strings.CutPrefix(o, "_pool_ns="); ok {
				ns = v
			}
		}
		for attr, v := range map[string]string{"pool": f[2], "pool_ns": ns, "name": f[3], "current_snap": f[4], "refresh": ""} {
			mustWrite(k.t, filepath.Join(dir, attr), v+"\n")
		}
		mustWrite(k.t, filepath.Join(k.dev, "rbd"+itoa(id)), "")
	case "remove_single_major":
		if err := os.RemoveAll(filepath.Join(k.sysfs, "bus", "rbd", "devices", f[0])); err != nil {
			return err
		}
	}
	return nil
}

func itoa(i int) string { return strconv.Itoa(i) }

func (k *fakeKernel) written() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.writes...)
}

type fakeKeys struct {
	added   []string
	payload []byte
	removed []int
	err     error
}

func (f *fakeKeys) Add(desc string, payload []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	f.added = append(f.added, desc)
	f.payload = payload
	return 42, nil
}

func (f *fakeKeys) Remove(serial int) error { f.removed = append(f.removed, serial); return nil }

func newTestKRBD(k *fakeKernel, keys KernelKeys, busy bool) *KRBD {
	return &KRBD{Sysfs: k.sysfs, Dev: k.dev, Write: k.write, Keys: keys, Runner: &fakeRunner{},
		Resolve: func(_ context.Context, host string) ([]string, error) {
			if host == "mon-a.example" {
				return []string{"10.0.0.1", "fd00::1"}, nil
			}
			return nil, errors.New("no such host")
		},
		Busy: func(string) (bool, error) { return busy, nil }, Timeout: 2 * time.Second}
}

func TestKRBDMapWritesTheRequestAndLendsTheKeyToTheKernel(t *testing.T) {
	k := newFakeKernel(t)
	keys := &fakeKeys{}
	m := newTestKRBD(k, keys, false)
	s := testSpec()
	s.Monitors = []string{"127.0.0.1:6789", "mon-a.example:3300", "[fd00::2]:6789"}
	s.Options = "queue_depth=128,lock_on_read"
	s.ReadOnly = true
	dev, err := m.Map(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if dev != filepath.Join(k.dev, "rbd0") {
		t.Errorf("device = %s", dev)
	}
	want := "bus/rbd/add_single_major: 127.0.0.1:6789,10.0.0.1:3300,[fd00::1]:3300,[fd00::2]:6789 " +
		"name=csi-rbd-node,key=client.csi-rbd-node,_pool_ns=ns1,queue_depth=128,lock_on_read,ro rbd csi-vol-1 -"
	if w := k.written(); len(w) != 1 || w[0] != want {
		t.Errorf("sysfs writes = %q\nwant %q", w, want)
	}
	if len(keys.added) != 1 || keys.added[0] != "client.csi-rbd-node" || len(keys.removed) != 1 || keys.removed[0] != 42 {
		t.Errorf("kernel keys: added %v, removed %v", keys.added, keys.removed)
	}
	// The kernel gets the decoded key, as the rbd CLI gives it.
	if raw, _ := base64.StdEncoding.DecodeString(testKey); !bytes.Equal(keys.payload, raw) {
		t.Errorf("key payload = %x, want the decoded key", keys.payload)
	}
	// Mapping again finds the device instead of writing a second request.
	again, err := m.Map(context.Background(), s)
	if err != nil || again != dev || len(k.written()) != 1 {
		t.Errorf("second map = %s, %v; writes %q", again, err, k.written())
	}
	// So does a new mapper (a restarted plugin).
	if found, err := newTestKRBD(k, keys, false).Find(context.Background(), Spec{Pool: "rbd", Namespace: "ns1", Image: "csi-vol-1"}); err != nil || found != dev {
		t.Errorf("Find after restart = %s, %v", found, err)
	}
	// Another namespace is another image.
	if found, _ := m.Find(context.Background(), Spec{Pool: "rbd", Image: "csi-vol-1"}); found != "" {
		t.Errorf("Find in the default namespace = %s, want none", found)
	}
}

func TestKRBDFallsBackToAnInlineSecretWithoutAKeyring(t *testing.T) {
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{err: unix.EPERM}, false)
	s := testSpec()
	s.Namespace = ""
	if _, err := m.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	want := "bus/rbd/add_single_major: 127.0.0.1:6789 name=csi-rbd-node,secret=" + testKey + " rbd csi-vol-1 -"
	if w := k.written(); len(w) != 1 || w[0] != want {
		t.Errorf("sysfs writes = %q\nwant %q", w, want)
	}
}

// A key the kernel refuses (EINVAL: a format it does not know) is not
// retried in the request line: the map fails, saying so, without the key.
func TestKRBDRefusedKeyIsNotPassedInline(t *testing.T) {
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{err: unix.EINVAL}, false)
	_, err := m.Map(context.Background(), testSpec())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "refused the key") {
		t.Fatalf("Map with a refused key = %v, want ErrUnsupported saying the kernel refused the key", err)
	}
	if strings.Contains(err.Error(), testKey) {
		t.Errorf("the error shows the key: %v", err)
	}
	if w := k.written(); len(w) != 0 {
		t.Errorf("sysfs writes after a refused key = %q, want none", w)
	}
}

func TestKRBDUnmap(t *testing.T) {
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{}, false)
	s := testSpec()
	if _, err := m.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmap(context.Background(), s, "bogus"); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("unmap with a bogus option = %v", err)
	}
	busy := newTestKRBD(k, &fakeKeys{}, true)
	err := busy.Unmap(context.Background(), s, "")
	if !errors.Is(err, ErrBusy) || csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("unmap of a busy device = %v, want ErrBusy", err)
	}
	if n := len(k.written()); n != 1 {
		t.Errorf("a busy device got a remove request: %q", k.written())
	}
	if err := m.Unmap(context.Background(), s, ""); err != nil {
		t.Fatal(err)
	}
	if w := k.written(); w[len(w)-1] != "bus/rbd/remove_single_major: 0" {
		t.Errorf("remove request = %q", w[len(w)-1])
	}
	if err := m.Unmap(context.Background(), s, ""); err != nil || len(k.written()) != 2 {
		t.Errorf("second unmap = %v, writes %q", err, k.written())
	}
	// force skips the busy check and tells the kernel.
	if _, err := busy.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if err := busy.Unmap(context.Background(), s, "force"); err != nil {
		t.Fatal(err)
	}
	if w := k.written(); w[len(w)-1] != "bus/rbd/remove_single_major: 1 force" {
		t.Errorf("forced remove request = %q", w[len(w)-1])
	}
}

func TestKRBDErrors(t *testing.T) {
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{}, false)
	s := testSpec()

	k.writeErr = &os.PathError{Op: "write", Path: "add_single_major", Err: unix.ENOENT}
	_, err := m.Map(context.Background(), s)
	if !errors.Is(err, ErrImageNotFound) || csierr.Code(err) != codes.NotFound || strings.Contains(err.Error(), testKey) {
		t.Errorf("ENOENT from the kernel = %v", err)
	}
	k.writeErr = nil

	bad := s
	bad.Options = "secret=other"
	if _, err := m.Map(context.Background(), bad); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("a secret in mapOptions = %v", err)
	}

	k.block = make(chan struct{})
	defer close(k.block)
	m.Timeout = 100 * time.Millisecond
	if _, err := m.Map(context.Background(), s); !errors.Is(err, context.DeadlineExceeded) || csierr.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a hanging kernel request = %v, want DeadlineExceeded", err)
	}
}

func TestKRBDWithoutTheModule(t *testing.T) {
	r := &fakeRunner{answer: func(keyexec.Command) (keyexec.Result, error) {
		return keyexec.Result{}, errors.New("modprobe: FATAL: Module rbd not found")
	}}
	m := &KRBD{Sysfs: t.TempDir(), Dev: t.TempDir(), Write: writeSysfs, Runner: r, Busy: DeviceBusy}
	_, err := m.Map(context.Background(), testSpec())
	if !errors.Is(err, ErrUnsupported) || csierr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "rbd module") {
		t.Errorf("map without the module = %v", err)
	}
	if got := r.commands(); len(got) != 1 || got[0] != "modprobe rbd" {
		t.Errorf("commands = %q, want modprobe rbd", got)
	}
	// Nothing mapped means nothing to find or unmap.
	if dev, err := m.Find(context.Background(), testSpec()); dev != "" || err != nil {
		t.Errorf("Find = %q, %v", dev, err)
	}
	if err := m.Unmap(context.Background(), testSpec(), ""); err != nil {
		t.Errorf("Unmap = %v", err)
	}
}

func TestKRBDRefresh(t *testing.T) {
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{}, false)
	dev, err := m.Map(context.Background(), testSpec())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(context.Background(), testSpec(), dev); err != nil {
		t.Fatal(err)
	}
	if w := k.written(); w[len(w)-1] != "bus/rbd/devices/0/refresh: 1" {
		t.Errorf("refresh write = %q", w[len(w)-1])
	}
}

const nbdListed = `[{"id":4242,"pool":"rbd","namespace":"ns1","image":"csi-vol-1","snap":"-","device":"/dev/nbd3","cookie":""},
{"id":4243,"pool":"rbd","namespace":"","image":"csi-vol-1","snap":"-","device":"/dev/nbd4"}]`

func TestNBDMapRunsRbdNbdWithTheKeyInMemory(t *testing.T) {
	mapped := false
	r := &fakeRunner{answer: func(c keyexec.Command) (keyexec.Result, error) {
		switch {
		case strings.Contains(c.String(), "list-mapped"):
			if mapped {
				return keyexec.Result{Stdout: nbdListed}, nil
			}
			return keyexec.Result{Stdout: "[]"}, nil
		case strings.HasSuffix(c.String(), " map rbd/ns1/csi-vol-1"):
			mapped = true
			return keyexec.Result{Stdout: "/dev/nbd3\n"}, nil
		}
		return keyexec.Result{}, errors.New("unexpected")
	}}
	n := &NBD{Binary: "rbd-nbd", Conf: "/etc/ceph/test.conf", Runner: r, Busy: func(string) (bool, error) { return false, nil }}
	s := testSpec()
	s.Options = "try-netlink,reattach-timeout=180"
	dev, err := n.Map(context.Background(), s)
	if err != nil || dev != "/dev/nbd3" {
		t.Fatalf("Map = %s, %v", dev, err)
	}
	want := []string{"rbd-nbd list-mapped --format json",
		"rbd-nbd -c /etc/ceph/test.conf --id csi-rbd-node --keyfile /proc/self/fd/3 -m 127.0.0.1:6789 --try-netlink --reattach-timeout=180 map rbd/ns1/csi-vol-1"}
	if got := r.commands(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if r.calls[1].Key != testKey {
		t.Error("the key was not handed over in memory")
	}
	// Mapped already: no second map.
	if again, err := n.Map(context.Background(), s); err != nil || again != "/dev/nbd3" || len(r.calls) != 3 {
		t.Errorf("second Map = %s, %v (%d commands)", again, err, len(r.calls))
	}
	// The default namespace is another mapping.
	if other, _ := n.Find(context.Background(), Spec{Pool: "rbd", Image: "csi-vol-1"}); other != "/dev/nbd4" {
		t.Errorf("Find in the default namespace = %s", other)
	}
}

func TestNBDUnmap(t *testing.T) {
	r := &fakeRunner{answer: func(c keyexec.Command) (keyexec.Result, error) {
		if strings.Contains(c.String(), "list-mapped") {
			return keyexec.Result{Stdout: nbdListed}, nil
		}
		return keyexec.Result{}, nil
	}}
	busy := true
	n := &NBD{Binary: "rbd-nbd", Runner: r, Busy: func(string) (bool, error) { return busy, nil }}
	if err := n.Unmap(context.Background(), testSpec(), ""); !errors.Is(err, ErrBusy) {
		t.Errorf("unmap of a mounted device = %v, want ErrBusy", err)
	}
	busy = false
	if err := n.Unmap(context.Background(), testSpec(), "io-timeout=30"); err != nil {
		t.Fatal(err)
	}
	got := r.commands()
	if got[len(got)-1] != "rbd-nbd --io-timeout=30 unmap /dev/nbd3" {
		t.Errorf("unmap command = %q", got[len(got)-1])
	}
	for _, c := range got {
		if strings.Contains(c, "unmap") && c != got[len(got)-1] {
			t.Errorf("a busy device was unmapped: %q", c)
		}
	}
}

func TestNBDErrors(t *testing.T) {
	r := &fakeRunner{answer: func(c keyexec.Command) (keyexec.Result, error) {
		if strings.Contains(c.String(), "list-mapped") {
			return keyexec.Result{Stdout: "[]"}, nil
		}
		return keyexec.Result{}, errors.New("rbd-nbd: failed to find unused device")
	}}
	n := &NBD{Binary: "rbd-nbd", Runner: r}
	_, err := n.Map(context.Background(), testSpec())
	if !errors.Is(err, ErrUnsupported) || csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("map without nbd devices = %v", err)
	}
	s := testSpec()
	s.Options = "keyring=/etc/ceph/keyring"
	if _, err := n.Map(context.Background(), s); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("a keyring in mapOptions = %v", err)
	}
}

// Read affinity: the node's CRUSH location reaches each mapper in its own
// form, with localized replica reads.
func TestReadAffinityReachesEveryMapper(t *testing.T) {
	loc := map[string]string{"zone": "z1", "region": "r1"}
	k := newFakeKernel(t)
	m := newTestKRBD(k, &fakeKeys{}, false)
	s := testSpec()
	s.CrushLocation = loc
	if _, err := m.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if w := k.written(); len(w) != 1 || !strings.Contains(w[0], ",read_from_replica=localize,crush_location=region:r1|zone:z1 ") {
		t.Errorf("krbd request %q lacks the localized reads", w)
	}

	r := &fakeRunner{answer: func(c keyexec.Command) (keyexec.Result, error) {
		if strings.Contains(c.String(), "list-mapped") {
			return keyexec.Result{Stdout: "[]"}, nil
		}
		return keyexec.Result{Stdout: "/dev/nbd3\n"}, nil
	}}
	n := &NBD{Binary: "rbd-nbd", Runner: r, Busy: func(string) (bool, error) { return false, nil }}
	if _, err := n.Map(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if got := r.commands(); len(got) < 2 || !strings.Contains(got[1], " --rbd_read_from_replica_policy=localize --crush_location=region=r1 zone=z1 map ") {
		t.Errorf("rbd-nbd command %q lacks the localized reads", got)
	}
}
