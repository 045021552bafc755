package rbdfuse

import (
	"context"
	"errors"
	"io"
	"log"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Image is what the file needs of an open RBD image (*rbd.Image has it).
type Image interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Discard(off, length uint64) (int, error)
	Flush() error
	GetSize() (uint64, error)
}

// maxDiscard is the largest range given to one discard: librbd refuses a
// length above INT_MAX.
const maxDiscard = 1 << 30

// imageFile is the one file of the mount: its bytes are the image's.
type imageFile struct {
	fs.Inode
	readOnly bool
	mtime    time.Time
	logger   *log.Logger

	// mu is held shared by every request and exclusively to close the
	// image, so that no request uses a closed image.
	mu  sync.RWMutex
	img Image // nil once closed
}

var (
	_ fs.NodeGetattrer = (*imageFile)(nil)
	_ fs.NodeSetattrer = (*imageFile)(nil)
	_ fs.NodeOpener    = (*imageFile)(nil)
	_ fs.NodeReader    = (*imageFile)(nil)
	_ fs.NodeWriter    = (*imageFile)(nil)
	_ fs.NodeFsyncer   = (*imageFile)(nil)
	_ fs.NodeFlusher   = (*imageFile)(nil)
	_ fs.NodeAllocater = (*imageFile)(nil)
)

func newImageFile(img Image, readOnly bool, logger *log.Logger) *imageFile {
	return &imageFile{img: img, readOnly: readOnly, mtime: time.Now(), logger: logger}
}

// use runs op with the open image, or fails with EIO once it is closed.
func (f *imageFile) use(op func(img Image) syscall.Errno) syscall.Errno {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.img == nil {
		return syscall.EIO
	}
	return op(f.img)
}

// close flushes and closes the image after the last request.
func (f *imageFile) close(closeImage func() error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.img == nil {
		return nil
	}
	err := f.img.Flush()
	f.img = nil
	return errors.Join(err, closeImage())
}

// errno is the errno to give the kernel for a librbd error; what is not
// an errno becomes EIO.
func (f *imageFile) errno(op string, off int64, n int, err error) syscall.Errno {
	e, ok := csierr.Errno(err)
	if !ok || e == 0 {
		e = syscall.EIO
	}
	f.logger.Printf("%s of %d bytes at %d: %v", op, n, off, err)
	return e
}

// Getattr asks librbd for the size each time (the mount has no attribute
// cache), so that a grown image shows at once.
func (f *imageFile) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return f.use(func(img Image) syscall.Errno {
		size, err := img.GetSize()
		if err != nil {
			return f.errno("getattr", 0, 0, err)
		}
		f.fillAttr(&out.Attr, size)
		return 0
	})
}

func (f *imageFile) fillAttr(a *fuse.Attr, size uint64) {
	a.Mode = syscall.S_IFREG | 0o600
	if f.readOnly {
		a.Mode = syscall.S_IFREG | 0o400
	}
	a.Size = size
	a.Blocks = (size + 511) / 512
	a.Blksize = 4096
	a.Nlink = 1
	a.SetTimes(nil, &f.mtime, &f.mtime)
}

// Setattr refuses a size change (the controller resizes images) and
// ignores the rest (modes, owners, times), which mean nothing here.
func (f *imageFile) Setattr(_ context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return f.use(func(img Image) syscall.Errno {
		size, err := img.GetSize()
		if err != nil {
			return f.errno("setattr", 0, 0, err)
		}
		if newSize, ok := in.GetSize(); ok && newSize != size {
			return syscall.EPERM
		}
		f.fillAttr(&out.Attr, size)
		return 0
	})
}

// Open bypasses the kernel's page cache for every opener, whether it asked
// for O_DIRECT or not: librbd caches already, and a second copy in the
// node's memory would only cost. Direct writes may run in parallel.
func (f *imageFile) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.readOnly && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

// Read reads at off; at or past the end of the image it reads nothing.
func (f *imageFile) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	var n int
	errno := f.use(func(img Image) syscall.Errno {
		var err error
		n, err = img.ReadAt(dest, off)
		switch {
		case err == nil, errors.Is(err, io.EOF):
			return 0
		case csierr.IsErrno(err, syscall.EINVAL) && pastEnd(img, off):
			n = 0 // librbd refuses to start past the end
			return 0
		}
		return f.errno("read", off, len(dest), err)
	})
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write writes at off. The image does not grow: a write that starts at or
// past its end fails with EFBIG, one that crosses it is cut short there.
func (f *imageFile) Write(_ context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.readOnly {
		return 0, syscall.EROFS
	}
	var n int
	errno := f.use(func(img Image) syscall.Errno {
		var err error
		n, err = img.WriteAt(data, off)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, io.EOF):
			if n == 0 {
				return syscall.EFBIG
			}
			return 0
		case csierr.IsErrno(err, syscall.EINVAL) && pastEnd(img, off):
			return syscall.EFBIG
		}
		return f.errno("write", off, len(data), err)
	})
	return uint32(n), errno
}

func pastEnd(img Image, off int64) bool {
	size, err := img.GetSize()
	return err == nil && uint64(off) >= size
}

// Fsync makes every write acknowledged so far durable in the cluster: the
// loop device turns a flush of its queue into an fsync of the file.
func (f *imageFile) Fsync(_ context.Context, _ fs.FileHandle, _ uint32) syscall.Errno {
	return f.flush("fsync")
}

// Flush (on every close of the file) flushes too, so that closing a
// writer leaves nothing in librbd's cache.
func (f *imageFile) Flush(_ context.Context, _ fs.FileHandle) syscall.Errno {
	return f.flush("flush")
}

func (f *imageFile) flush(op string) syscall.Errno {
	if f.readOnly {
		return 0
	}
	return f.use(func(img Image) syscall.Errno {
		if err := img.Flush(); err != nil {
			return f.errno(op, 0, 0, err)
		}
		return 0
	})
}

// Allocate discards the range for a hole punch (a loop device's discard)
// and for zeroing (its write-zeroes): librbd reads a discarded range back
// as zeros. Preallocation means nothing on a thin image and is refused, as
// is anything that would grow the file.
func (f *imageFile) Allocate(_ context.Context, _ fs.FileHandle, off, length uint64, mode uint32) syscall.Errno {
	if f.readOnly {
		return syscall.EROFS
	}
	keepSize := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keepSize {
			return syscall.EOPNOTSUPP // punching a hole always keeps the size
		}
	case unix.FALLOC_FL_ZERO_RANGE:
	default:
		return syscall.EOPNOTSUPP
	}
	return f.use(func(img Image) syscall.Errno {
		size, err := img.GetSize()
		if err != nil {
			return f.errno("fallocate", int64(off), int(length), err)
		}
		end := off + length
		if end < off || end > size {
			if !keepSize {
				return syscall.EOPNOTSUPP
			}
			end = size
		}
		for off < end {
			n := min(end-off, maxDiscard)
			if _, err := img.Discard(off, n); err != nil {
				return f.errno("discard", int64(off), int(n), err)
			}
			off += n
		}
		return 0
	})
}
