package cephfs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/cephconn"
)

// testKey is shaped like a cephx key but is none; it is assembled at run
// time so that no key-shaped literal sits in the repository.
var testKey = "AQD2" + "bGFtYmRhLWtleS1mb3ItdGVzdHMtb25seQ=="

func testSpec() mountSpec {
	return mountSpec{Monitors: []string{"10.0.0.1:6789", "10.0.0.2:6789"}, FsName: "myfs", Root: "/volumes/csi/v/uuid",
		Target: "/staging", Creds: cephconn.Credentials{ID: "csi-cephfs-node", Key: testKey}, Options: []string{"noatime", "debug"}}
}

func TestFuseArgs(t *testing.T) {
	args := fuseArgs(testSpec())
	joined := strings.Join(args, " ")
	if strings.Contains(joined, testKey) {
		t.Fatal("the key is on the ceph-fuse command line")
	}
	for _, want := range []string{"/staging -c /dev/null", "-m 10.0.0.1:6789,10.0.0.2:6789", "--id csi-cephfs-node",
		"--keyfile /proc/self/fd/3", "--client_fs=myfs", "-r /volumes/csi/v/uuid", "-o noatime,debug"} {
		if !strings.Contains(joined, want) {
			t.Errorf("ceph-fuse args %q lack %q", joined, want)
		}
	}
	s := testSpec()
	s.Options = nil
	if slices.Contains(fuseArgs(s), "-o") {
		t.Error("-o without options")
	}
}

func TestKernelArgs(t *testing.T) {
	args := kernelArgs(testSpec())
	if strings.Contains(strings.Join(args, " "), testKey) {
		t.Fatal("the key is on the mount.ceph command line")
	}
	want := []string{"10.0.0.1:6789,10.0.0.2:6789:/volumes/csi/v/uuid", "/staging", "-o",
		"name=csi-cephfs-node,secretfile=/proc/self/fd/3,mds_namespace=myfs,noatime,debug"}
	if !slices.Equal(args, want) {
		t.Errorf("mount.ceph args = %q, want %q", args, want)
	}
}

// TestRunWithKeyPassesKeyOnFD3 runs a helper that prints what it finds on
// file descriptor 3 and fails: the key arrived, and the error shows it masked.
func TestRunWithKeyPassesKeyOnFD3(t *testing.T) {
	err := runWithKey(context.Background(), testKey, false, "sh", "-c", `printf 'size %s: ' "$(stat -L -c %s `+keyFD+`)"; cat `+keyFD+`; exit 3`)
	if err == nil {
		t.Fatal("a failing helper reported success")
	}
	msg := err.Error()
	if strings.Contains(msg, testKey) {
		t.Fatalf("the error carries the key: %s", msg)
	}
	if !strings.Contains(msg, "size 40: <redacted>") {
		t.Errorf("the helper did not read the 40-byte key from fd 3: %s", msg)
	}
	if err := runWithKey(context.Background(), testKey, false, "sh", "-c", "test -r "+keyFD); err != nil {
		t.Errorf("a succeeding helper: %v", err)
	}
}

func TestHelperOutputKeepsTheTail(t *testing.T) {
	var lines []string
	for i := 0; i < 20; i++ {
		lines = append(lines, "line "+string(rune('a'+i)))
	}
	got := helperOutput(strings.Join(lines, "\n")+"\ninit, newargv = 0x1 newargc=15\n\n", "")
	if strings.Count(got, ";") != 7 || !strings.HasSuffix(got, "line t") || strings.Contains(got, "newargv") {
		t.Errorf("helperOutput = %q", got)
	}
}

func TestSplitOptions(t *testing.T) {
	if got := splitOptions(" a, b ,,c "); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("splitOptions = %q", got)
	}
	if got := splitOptions(""); got != nil {
		t.Errorf("splitOptions(\"\") = %q", got)
	}
}

func TestSnapshotDataDir(t *testing.T) {
	root := t.TempDir()
	u := "0e056022-5170-4a96-906d-d94aaf207d42"
	for _, d := range []string{".snap/csi-snap-" + u + "/data-uuid", ".snap/other-snap/data-uuid"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, ".snap/csi-snap-"+u+"/.meta"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := snapshotDataDir(root, u)
	if err != nil || got != ".snap/csi-snap-"+u+"/data-uuid" {
		t.Errorf("snapshotDataDir = %q, %v", got, err)
	}
	if _, err := snapshotDataDir(root, "11111111-2222-3333-4444-555555555555"); err == nil {
		t.Error("found a snapshot that is not there")
	}
	if err := os.MkdirAll(filepath.Join(root, ".snap/csi-snap-"+u+"/second"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotDataDir(root, u); err == nil {
		t.Error("an ambiguous snapshot directory was accepted")
	}
}

func TestQuotaStatsOutsideCephFS(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	usage := quotaUsage(dir, &st)
	if len(usage) != 2 || usage[0].GetUnit() != csi.VolumeUsage_BYTES || usage[0].GetTotal() <= 0 {
		t.Errorf("statfs fallback = %v", usage)
	}
}
