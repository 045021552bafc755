//go:build integration

package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/testutil"
)

// leanFloor is what the floor process (./leanfloor) measured: its RSS idle
// after a warm-up create and remove, and its peak during the c16 load.
type leanFloor struct {
	idle, peak uint64
	samples    int
}

// BenchmarkRBDLeanFloor builds and runs ./leanfloor, a process that links
// go-ceph and makes the c16 rows' librbd calls through one connection and
// nothing else, and reads its memory as the lean figures read the
// driver's: what the driver's RSS is to be compared with.
func BenchmarkRBDLeanFloor(b *testing.B) {
	c := testutil.RequireCluster(b)
	dir := b.TempDir()
	bin := filepath.Join(dir, "leanfloor")
	build := exec.Command("go", "build", "-o", bin, "./leanfloor")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building leanfloor: %v\n%s", err, out)
	}
	prefix := "leanfloor-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	b.Cleanup(func() { removeFloorImages(b, c, prefix) })
	cmd := exec.Command(bin, "-conf", c.Conf, "-pool", rbdPool, "-prefix", prefix,
		"-n", fmt.Sprint(concN), "-c", fmt.Sprint(concurrency), "-size", fmt.Sprint(uint64(rbdSize)))
	asok := filepath.Join(dir, "asok")
	if err := os.Mkdir(asok, 0o700); err != nil {
		b.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "CEPH_ARGS="+cephArgs(asok))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("leanfloor: %v", err)
		}
	}()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		b.Helper()
		if !lines.Scan() || lines.Text() != want {
			b.Fatalf("leanfloor said %q (%v), want %q", lines.Text(), lines.Err(), want)
		}
	}
	pid := cmd.Process.Pid
	expect("idle")
	time.Sleep(settleBeforeRead)
	idle, err := readProc(pid, "")
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	stopPeak := samplePeakRSS(pid)
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		stopPeak()
		b.Fatal(err)
	}
	finished := lines.Scan() && lines.Text() == "done"
	var f leanFloor
	f.peak, f.samples = stopPeak()
	if !finished {
		b.Errorf("leanfloor stopped before its load was done: %q %v", lines.Text(), lines.Err())
	}
	phase(fmt.Sprintf("rbd lean floor: %d creates, removes, clones and removes at c%d", concN, concurrency), start)
	f.idle = idle.RSS
	rowsMu.Lock()
	leanState().floor = &f
	rowsMu.Unlock()
	if _, err := io.WriteString(stdin, "exit\n"); err != nil {
		b.Error(err)
	}
}

// removeFloorImages removes what a failed leanfloor run left: its clones
// first, then the images with their snapshots.
func removeFloorImages(b *testing.B, c *testutil.Cluster, prefix string) {
	ioctx := c.IOContext(b, rbdPool)
	names, err := rbd.GetImageNames(ioctx)
	if err != nil {
		b.Errorf("listing images: %v", err)
		return
	}
	var left []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+"-clone-") {
			left = append([]string{n}, left...)
		} else if strings.HasPrefix(n, prefix+"-") {
			left = append(left, n)
		}
	}
	for _, n := range left {
		if img, err := rbd.OpenImage(ioctx, n, rbd.NoSnapshot); err == nil {
			snaps, _ := img.GetSnapshotNames()
			for _, s := range snaps {
				_ = img.GetSnapshot(s.Name).Remove()
			}
			img.Close()
		}
		if err := rbd.RemoveImage(ioctx, n); err != nil {
			b.Errorf("leanfloor left %s, which could not be removed: %v", n, err)
		}
	}
}
