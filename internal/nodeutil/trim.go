package nodeutil

import (
	"fmt"
	"math"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fstrimRange is the kernel's struct fstrim_range.
type fstrimRange struct {
	Start, Len, MinLen uint64
}

// fitrim is FITRIM, _IOWR('X', 121, struct fstrim_range), which x/sys does
// not define.
const fitrim = 0xc0185879

// Trim discards the blocks the filesystem mounted at path does not use
// (what fstrim does) and returns how many bytes the filesystem trimmed.
func Trim(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }() // opened read-only: nothing to flush
	r := fstrimRange{Len: math.MaxUint64}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fitrim, uintptr(unsafe.Pointer(&r))); errno != 0 {
		return 0, fmt.Errorf("FITRIM: %w", errno)
	}
	return r.Len, nil
}
