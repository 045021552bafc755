// Command leanfloor is the floor of the bench's lean figures: a process
// that links go-ceph and does, through one connection and nothing else,
// the librbd work the RBD controller's lean rows measure. The bench reads
// its memory the way it reads the driver's.
//
// It makes and removes one image (the warm-up), prints "idle" and waits
// for a line on stdin; then, on 16 goroutines, makes and removes 100
// images, clones one snapshot 100 times and removes the clones (the c16
// rows' librbd calls), prints "done" and waits for a line to exit. The
// journal's omap writes are left out: a few hundred bytes each.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"sync"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/leanceph/cephcsi/internal/bench/rbdopts"
)

func main() {
	conf := flag.String("conf", "", "ceph.conf of the cluster (with its keyring)")
	pool := flag.String("pool", "rbd", "pool")
	prefix := flag.String("prefix", "leanfloor", "name prefix of the images")
	n := flag.Int("n", 100, "images made (and clones) in the load")
	workers := flag.Int("c", 16, "concurrency of the load")
	size := flag.Uint64("size", 1<<30, "image size")
	flag.Parse()
	if err := run(*conf, *pool, *prefix, *n, *workers, *size); err != nil {
		fmt.Fprintln(os.Stderr, "leanfloor:", err)
		os.Exit(1)
	}
}

func run(conf, pool, prefix string, n, workers int, size uint64) error {
	conn, err := rados.NewConn()
	if err != nil {
		return err
	}
	if err := conn.ReadConfigFile(conf); err != nil {
		return err
	}
	if err := conn.ParseDefaultConfigEnv(); err != nil {
		return err
	}
	if err := conn.Connect(); err != nil {
		return err
	}
	defer conn.Shutdown()
	io, err := conn.OpenIOContext(pool)
	if err != nil {
		return err
	}
	defer io.Destroy()
	opts, err := rbdopts.New(rbd.FeatureLayering, false)
	if err != nil {
		return err
	}
	defer opts.Destroy()
	cloneOpts, err := rbdopts.New(rbd.FeatureLayering, true)
	if err != nil {
		return err
	}
	defer cloneOpts.Destroy()
	name := func(kind string, i int) string { return fmt.Sprintf("%s-%s-%d", prefix, kind, i) }

	warm := name("warm", 0)
	if err := rbd.CreateImage(io, warm, size, opts); err != nil {
		return err
	}
	if err := rbd.RemoveImage(io, warm); err != nil {
		return err
	}
	stdin := bufio.NewScanner(os.Stdin)
	fmt.Println("idle")
	stdin.Scan()

	each := func(do func(i int) error) error {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		next := make(chan int)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := do(i); err != nil {
						errs <- err
					}
				}
			}()
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		close(errs)
		return <-errs
	}
	if err := each(func(i int) error { return rbd.CreateImage(io, name("vol", i), size, opts) }); err != nil {
		return err
	}
	if err := each(func(i int) error { return rbd.RemoveImage(io, name("vol", i)) }); err != nil {
		return err
	}
	src := name("src", 0)
	if err := rbd.CreateImage(io, src, size, opts); err != nil {
		return err
	}
	if err := withImage(io, src, func(img *rbd.Image) error { _, err := img.CreateSnapshot("snap"); return err }); err != nil {
		return err
	}
	if err := each(func(i int) error { return rbd.CloneImage(io, src, "snap", io, name("clone", i), cloneOpts) }); err != nil {
		return err
	}
	if err := each(func(i int) error { return rbd.RemoveImage(io, name("clone", i)) }); err != nil {
		return err
	}
	if err := withImage(io, src, func(img *rbd.Image) error { return img.GetSnapshot("snap").Remove() }); err != nil {
		return err
	}
	if err := rbd.RemoveImage(io, src); err != nil {
		return err
	}
	fmt.Println("done")
	stdin.Scan()
	return nil
}

// withImage runs do on the image name, opened, and closes it.
func withImage(io *rados.IOContext, name string, do func(*rbd.Image) error) error {
	img, err := rbd.OpenImage(io, name, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	err = do(img)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}
