package rbdfuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fakeImage is an image in memory. With data nil it stores nothing and
// only records the calls (for sizes too large to hold).
type fakeImage struct {
	mu       sync.Mutex
	size     uint64
	data     []byte
	flushes  int
	discards [][2]uint64
	err      error // returned by every call when set
}

func newFakeImage(size int) *fakeImage {
	return &fakeImage{size: uint64(size), data: make([]byte, size)}
}

// cephErr mimics go-ceph's errors, which carry a negative errno.
type cephErr int

func (e cephErr) Error() string  { return fmt.Sprintf("rbd: ret=%d", int(e)) }
func (e cephErr) ErrorCode() int { return int(e) }

// clip mimics librbd: no request may start past the end, one that crosses
// it is cut there.
func (f *fakeImage) clip(off int64, n int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	if uint64(off) >= f.size {
		return 0, cephErr(-int(syscall.EINVAL))
	}
	return int(min(uint64(n), f.size-uint64(off))), nil
}

func (f *fakeImage) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	n, err := f.clip(off, len(p))
	if err != nil {
		return 0, err
	}
	copy(p, f.data[off:off+int64(n)])
	if n < len(p) {
		return n, io.EOF // as go-ceph reports a short read
	}
	return n, nil
}

func (f *fakeImage) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	n, err := f.clip(off, len(p))
	if err != nil {
		return 0, err
	}
	copy(f.data[off:], p[:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *fakeImage) Discard(off, length uint64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if length > 1<<31-1 {
		return 0, cephErr(-int(syscall.EINVAL)) // librbd's limit
	}
	f.discards = append(f.discards, [2]uint64{off, length})
	if f.data != nil {
		clear(f.data[off : off+length])
	}
	return int(length), nil
}

func (f *fakeImage) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flushes++
	return f.err
}

func (f *fakeImage) GetSize() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size, f.err
}

func (f *fakeImage) grow(size int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.data = append(f.data, make([]byte, size-len(f.data))...)
	f.size = uint64(size)
}

func testLogger(t *testing.T) *log.Logger {
	return log.New(testWriter{t}, "", 0)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func read(t *testing.T, f *imageFile, n int, off int64) ([]byte, syscall.Errno) {
	t.Helper()
	res, errno := f.Read(context.Background(), nil, make([]byte, n), off)
	if errno != 0 {
		return nil, errno
	}
	data, status := res.Bytes(make([]byte, n))
	if status != fuse.OK {
		t.Fatalf("read result: %v", status)
	}
	return data, 0
}

func TestFileReadsAndWritesTheImageAtOffsets(t *testing.T) {
	img := newFakeImage(1 << 20)
	f := newImageFile(img, false, testLogger(t))
	payload := []byte("bytes written are the bytes read")
	const off = 300_001
	if n, errno := f.Write(context.Background(), nil, payload, off); errno != 0 || int(n) != len(payload) {
		t.Fatalf("Write = %d, %v", n, errno)
	}
	if !bytes.Equal(img.data[off:off+len(payload)], payload) {
		t.Fatal("the write did not reach the image at its offset")
	}
	got, errno := read(t, f, len(payload), off)
	if errno != 0 || !bytes.Equal(got, payload) {
		t.Fatalf("Read = %q, %v", got, errno)
	}
	// A read crossing the end is cut there; one past the end reads nothing.
	if got, errno := read(t, f, 100, 1<<20-10); errno != 0 || len(got) != 10 {
		t.Errorf("read across the end = %d bytes, %v; want 10", len(got), errno)
	}
	if got, errno := read(t, f, 100, 1<<20); errno != 0 || len(got) != 0 {
		t.Errorf("read at the end = %d bytes, %v; want none", len(got), errno)
	}
	// The image does not grow by writing.
	if n, errno := f.Write(context.Background(), nil, payload, 1<<20); errno != syscall.EFBIG || n != 0 {
		t.Errorf("write at the end = %d, %v; want EFBIG", n, errno)
	}
	if n, errno := f.Write(context.Background(), nil, payload, 1<<20-4); errno != 0 || n != 4 {
		t.Errorf("write across the end = %d, %v; want 4 bytes", n, errno)
	}
	// librbd's errors reach the kernel as their errno.
	img.err = cephErr(-int(syscall.EIO))
	if _, errno := f.Write(context.Background(), nil, payload, 0); errno != syscall.EIO {
		t.Errorf("write with a failing image = %v, want EIO", errno)
	}
	img.err = cephErr(-int(syscall.ETIMEDOUT))
	if _, errno := read(t, f, 10, 0); errno != syscall.ETIMEDOUT {
		t.Errorf("read with a timing-out image = %v, want ETIMEDOUT", errno)
	}
	img.err = errors.New("not an errno")
	if _, errno := read(t, f, 10, 0); errno != syscall.EIO {
		t.Errorf("read with a plain error = %v, want EIO", errno)
	}
}

func TestFileSizeFollowsTheImage(t *testing.T) {
	img := newFakeImage(4096)
	f := newImageFile(img, false, testLogger(t))
	var out fuse.AttrOut
	if errno := f.Getattr(context.Background(), nil, &out); errno != 0 || out.Size != 4096 || out.Mode != syscall.S_IFREG|0o600 {
		t.Fatalf("Getattr = %+v, %v", out.Attr, errno)
	}
	img.grow(8192)
	if errno := f.Getattr(context.Background(), nil, &out); errno != 0 || out.Size != 8192 {
		t.Errorf("size after the image grew = %d, %v; want 8192", out.Size, errno)
	}
	// Truncating is the controller's business; other attributes are ignored.
	in := &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE, Size: 0}}
	if errno := f.Setattr(context.Background(), nil, in, &out); errno != syscall.EPERM {
		t.Errorf("truncate = %v, want EPERM", errno)
	}
	in = &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_MODE, Mode: 0o777}}
	if errno := f.Setattr(context.Background(), nil, in, &out); errno != 0 || out.Mode != syscall.S_IFREG|0o600 || out.Size != 8192 {
		t.Errorf("chmod = %+v, %v", out.Attr, errno)
	}
}

func TestFileFlushesAndDiscards(t *testing.T) {
	img := newFakeImage(1 << 20)
	copy(img.data, bytes.Repeat([]byte{0xff}, 1<<20))
	f := newImageFile(img, false, testLogger(t))
	if errno := f.Fsync(context.Background(), nil, 0); errno != 0 || img.flushes != 1 {
		t.Errorf("Fsync = %v, %d flushes", errno, img.flushes)
	}
	if errno := f.Flush(context.Background(), nil); errno != 0 || img.flushes != 2 {
		t.Errorf("Flush = %v, %d flushes", errno, img.flushes)
	}
	// A loop device's discard punches a hole: the range reads back as zeros.
	punch := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if errno := f.Allocate(context.Background(), nil, 4096, 8192, punch); errno != 0 {
		t.Fatalf("punch hole = %v", errno)
	}
	if got, _ := read(t, f, 3*4096, 0); !bytes.Equal(got[4096:12288], make([]byte, 8192)) || got[4095] != 0xff {
		t.Error("the punched range does not read back as zeros, or more was zeroed")
	}
	// Its write-zeroes is a zero range; past the end it is cut short.
	if errno := f.Allocate(context.Background(), nil, 1<<20-512, 4096, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE); errno != 0 {
		t.Errorf("zero range across the end = %v", errno)
	}
	if last := img.discards[len(img.discards)-1]; last != [2]uint64{1<<20 - 512, 512} {
		t.Errorf("discard = %v, want the 512 bytes before the end", last)
	}
	for _, mode := range []uint32{0, unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE, unix.FALLOC_FL_COLLAPSE_RANGE} {
		if errno := f.Allocate(context.Background(), nil, 0, 4096, mode); errno != syscall.EOPNOTSUPP {
			t.Errorf("fallocate mode %#x = %v, want EOPNOTSUPP", mode, errno)
		}
	}
	// Growing through fallocate is refused.
	if errno := f.Allocate(context.Background(), nil, 1<<20-512, 4096, unix.FALLOC_FL_ZERO_RANGE); errno != syscall.EOPNOTSUPP {
		t.Errorf("zero range growing the file = %v, want EOPNOTSUPP", errno)
	}

	// librbd takes at most INT_MAX bytes per discard: a 3 GiB trim is cut
	// into pieces that cover it exactly.
	big := &fakeImage{size: 3 << 30}
	fb := newImageFile(big, false, testLogger(t))
	if errno := fb.Allocate(context.Background(), nil, 512, 3<<30, punch); errno != 0 {
		t.Fatalf("3 GiB discard = %v", errno)
	}
	want := [][2]uint64{{512, 1 << 30}, {512 + 1<<30, 1 << 30}, {512 + 2<<30, 1<<30 - 512}}
	if !slices.Equal(big.discards, want) {
		t.Errorf("discards = %v, want %v", big.discards, want)
	}
}

func TestReadOnlyFileRefusesWrites(t *testing.T) {
	img := newFakeImage(4096)
	f := newImageFile(img, true, testLogger(t))
	if _, _, errno := f.Open(context.Background(), syscall.O_RDWR); errno != syscall.EROFS {
		t.Errorf("open for writing = %v, want EROFS", errno)
	}
	if _, flags, errno := f.Open(context.Background(), syscall.O_RDONLY); errno != 0 || flags&fuse.FOPEN_DIRECT_IO == 0 {
		t.Errorf("open for reading = %#x, %v", flags, errno)
	}
	if _, errno := f.Write(context.Background(), nil, []byte("x"), 0); errno != syscall.EROFS {
		t.Errorf("write = %v, want EROFS", errno)
	}
	if errno := f.Allocate(context.Background(), nil, 0, 4096, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE); errno != syscall.EROFS {
		t.Errorf("discard = %v, want EROFS", errno)
	}
	if errno := f.Fsync(context.Background(), nil, 0); errno != 0 || img.flushes != 0 {
		t.Errorf("fsync of a read-only file = %v, %d flushes", errno, img.flushes)
	}
	var out fuse.AttrOut
	if errno := f.Getattr(context.Background(), nil, &out); errno != 0 || out.Mode != syscall.S_IFREG|0o400 {
		t.Errorf("mode = %o, %v", out.Mode, errno)
	}
}

func TestCloseFlushesOnceAndEndsService(t *testing.T) {
	img := newFakeImage(4096)
	f := newImageFile(img, false, testLogger(t))
	closed := 0
	closeImage := func() error { closed++; return nil }
	if err := f.close(closeImage); err != nil || closed != 1 || img.flushes != 1 {
		t.Fatalf("close = %v, closed %d, %d flushes", err, closed, img.flushes)
	}
	if err := f.close(closeImage); err != nil || closed != 1 {
		t.Errorf("second close = %v, closed %d times", err, closed)
	}
	if _, errno := read(t, f, 10, 0); errno != syscall.EIO {
		t.Errorf("read after close = %v, want EIO", errno)
	}
}

func TestArgsRoundTrip(t *testing.T) {
	c := Config{Monitors: []string{"10.0.0.1:6789", "[fd00::1]:3300"}, UserID: "csi-rbd-node", CephConf: "/etc/ceph/ceph.conf",
		Pool: "rbd", Namespace: "ns1", Image: "csi-vol-1", ReadOnly: true, CrushLocation: "region=r1 zone=z1",
		Options: Options{Debug: true, MaxWrite: 65536, MaxBackground: 8}, MountPoint: "/var/lib/kubelet/plugins/x/rbd-fuse/abc"}
	args := c.Args()
	if args[len(args)-1] != c.MountPoint {
		t.Errorf("the mount point is not last: %q", args)
	}
	got, err := ParseArgs(args)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(c) {
		t.Errorf("ParseArgs(Args()) = %+v, want %+v", got, c)
	}
	c.Namespace, c.CephConf, c.ReadOnly = "", "", false
	if got, err := ParseArgs(c.Args()); err != nil || fmt.Sprint(got) != fmt.Sprint(c) {
		t.Errorf("without namespace and conf: %+v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {"--pool=rbd", "/mnt"}, {"--mon-host=m", "--id=u", "--pool=p", "--image=i"}, {"--bogus", "/mnt"}} {
		if _, err := ParseArgs(bad); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
}

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions("")
	if err != nil || o.MaxWrite != DefaultMaxWrite || o.MaxBackground != DefaultMaxBackground || o.Debug {
		t.Errorf("defaults = %+v, %v", o, err)
	}
	o, err = ParseOptions(" debug, max_read=131072,allow_root,max_background=16")
	if err != nil || o != (Options{Debug: true, MaxWrite: 131072, MaxBackground: 16}) {
		t.Errorf("options = %+v, %v", o, err)
	}
	if again, err := ParseOptions(o.String()); err != nil || again != o {
		t.Errorf("ParseOptions(String()) = %+v, %v", again, err)
	}
	for _, bad := range []string{"max_write=1", "max_write", "max_write=4M", "max_background=0", "allow_other", "nonempty"} {
		if _, err := ParseOptions(bad); !errors.Is(err, ErrBadOption) {
			t.Errorf("ParseOptions(%q) = %v, want ErrBadOption", bad, err)
		}
	}
}

func TestFailureReportsKeepTheirClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{fmt.Errorf("opening image rbd/x: %w", ErrNotFound), ErrNotFound},
		{fmt.Errorf("opening pool p: %w", cephErr(-int(syscall.ENOENT))), ErrNotFound},
		{fmt.Errorf("connecting: %w", cephErr(-int(syscall.EACCES))), ErrPermission},
		{fmt.Errorf("opening image: %w", cephErr(-int(syscall.EPERM))), ErrPermission},
		{fmt.Errorf("connecting: %w", cephErr(-int(syscall.ETIMEDOUT))), ErrTimedOut},
		{fmt.Errorf("x: %w", ErrBadOption), ErrBadOption},
	} {
		report := failureReport(tc.err)
		got := FailureFromReport(report)
		if !errors.Is(got, tc.want) || !strings.Contains(got.Error(), tc.err.Error()) {
			t.Errorf("%v -> %q -> %v, want %v", tc.err, report, got, tc.want)
		}
	}
	other := FailureFromReport(failureReport(errors.New("mount failed\nbadly")))
	for _, s := range []error{ErrNotFound, ErrPermission, ErrTimedOut, ErrBadOption} {
		if errors.Is(other, s) {
			t.Errorf("an unclassed failure became %v", s)
		}
	}
	if other.Error() != "mount failed badly" {
		t.Errorf("unclassed failure = %q", other)
	}
	if FailureFromReport("") == nil {
		t.Error("an empty report is no failure")
	}
}
