package rbdfuse

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestKernelDataPath mounts a fake image through the kernel's FUSE and a
// loop device, the way the mapper uses the helper, and checks what reaches
// the image: writes at their offsets, fsync as a flush, the loop device's
// discards, and a grown image seen by the loop device after
// --set-capacity. No cluster is needed.
func TestKernelDataPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	const size = 8 << 20
	img := newFakeImage(size)
	file := newImageFile(img, false, testLogger(t))
	mnt := t.TempDir()
	opts, _ := ParseOptions("")
	server, err := mount(Config{Pool: "rbd", Image: "csi-vol-1", Options: opts, MountPoint: mnt}, file, testLogger(t))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			_ = server.Unmount()
		}
	})
	path := filepath.Join(mnt, "csi-vol-1")
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Fatalf("stat = %v, %v; want %d bytes", fi, err, size)
	}

	// Nothing can be removed, renamed or created in the mount.
	if err := os.Remove(path); !errors.Is(err, syscall.EPERM) {
		t.Errorf("removing the image's file: %v, want EPERM", err)
	}
	if err := os.Rename(path, path+".x"); err == nil {
		t.Error("renaming the image's file succeeded")
	}
	if err := os.WriteFile(filepath.Join(mnt, "other"), nil, 0o600); err == nil {
		t.Error("creating a file in the mount succeeded")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the image's file is gone: %v", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("through the kernel "), 1000)
	if _, err := f.WriteAt(payload, 12345); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img.data[12345:12345+len(payload)], payload) {
		t.Error("a write through the mount did not reach the image at its offset")
	}
	flushes := img.flushes
	if err := f.Sync(); err != nil || img.flushes == flushes {
		t.Errorf("fsync = %v, flushes %d -> %d", err, flushes, img.flushes)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 12345, 100); err != nil {
		t.Errorf("punch hole: %v", err)
	}
	back := make([]byte, len(payload))
	if _, err := f.ReadAt(back, 12345); err != nil || !bytes.Equal(back[:100], make([]byte, 100)) || !bytes.Equal(back[100:], payload[100:]) {
		t.Errorf("read after punching 100 bytes: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Error(err)
	}

	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })
	if dio, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio")); strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("the loop device does not do direct I/O on the FUSE file (dio=%q)", dio)
	}
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte{0xab}, 64<<10)
	if _, err := d.WriteAt(block, 1<<20); err != nil {
		t.Fatal(err)
	}
	flushes = img.flushes
	if err := d.Sync(); err != nil || img.flushes == flushes {
		t.Errorf("fsync of the loop device = %v, flushes %d -> %d", err, flushes, img.flushes)
	}
	if !bytes.Equal(img.data[1<<20:1<<20+len(block)], block) {
		t.Error("a write to the loop device did not reach the image")
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}
	if _, err := exec.LookPath("blkdiscard"); err == nil {
		discards := len(img.discards)
		if out, err := exec.Command("blkdiscard", "--offset", "1048576", "--length", "65536", dev).CombinedOutput(); err != nil {
			t.Errorf("blkdiscard: %v: %s", err, out)
		}
		if len(img.discards) == discards || !bytes.Equal(img.data[1<<20:1<<20+len(block)], make([]byte, len(block))) {
			t.Errorf("the loop device's discard did not reach the image (discards %v)", img.discards[discards:])
		}
	}

	// The image grows (ControllerExpandVolume); a stat and --set-capacity
	// make the loop device follow (the mapper's Refresh).
	img.grow(16 << 20)
	if fi, err := os.Stat(path); err != nil || fi.Size() != 16<<20 {
		t.Fatalf("stat after growth = %v, %v", fi, err)
	}
	if out, err := exec.Command("losetup", "--set-capacity", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup --set-capacity: %v: %s", err, out)
	}
	d, err = os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(d.Fd()), unix.BLKGETSIZE64)
	_ = d.Close()
	if err != nil || n != 16<<20 {
		t.Errorf("loop device size after growth = %d, %v", n, err)
	}
	// Busy while the loop device holds the file; unmounted once detached.
	if err := unix.Unmount(mnt, 0); !errors.Is(err, unix.EBUSY) {
		t.Errorf("unmount under a loop device = %v, want EBUSY", err)
	}
	if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup --detach: %v: %s", err, out)
	}
	// The kernel detaches asynchronously once the device is closed.
	for i := 0; i < 100; i++ {
		if err = unix.Unmount(mnt, 0); !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("unmount after detaching: %v", err)
	}
	unmounted = true
	server.Wait() // returns once the mount is gone
}
