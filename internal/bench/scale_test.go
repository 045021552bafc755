//go:build integration

package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The scale curve: CreateVolume and DeleteVolume with 0, 1,000, 5,000 and
// 10,000 of our volumes already in the pool. The pool is filled through
// the driver's own CreateVolume on 16 clients, so that what is there is
// what the driver sees as its volumes: keys in csi.volumes.default (the
// journal directory object, which grows), entry objects and images. At
// each level scaleN volumes are created and deleted one at a time, next to
// the floor; the fill is deleted through the driver at the end.

// envScale lists the levels (volumes in the pool before a measurement).
const envScale = "CEPHCSI_BENCH_SCALE"

const scaleN = 30

type scalePoint struct {
	volumes        int
	create, delete seqResult
}

var scalePoints []scalePoint

// scaleMaxRatio is the target: p50 at the largest level within this of p50
// at 0.
const scaleMaxRatio = 1.2

func scaleLevels(b *testing.B) []int {
	v := os.Getenv(envScale)
	if v == "" {
		return []int{0, 1000, 5000, 10000}
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			b.Fatalf("%s=%q: want levels such as 0,1000,5000,10000", envScale, v)
		}
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// BenchmarkRBDScale measures the curve (see above).
func BenchmarkRBDScale(b *testing.B) {
	r := newRBDRun(b)
	r.warmUp()
	r.scaleCurve(scaleLevels(b))
	r.finish()
}

// scaleCurve fills the pool level by level and measures at each.
func (r *rbdRun) scaleCurve(levels []int) {
	b := r.b
	var fill []string // IDs of the fill volumes
	fillName := func(i int) string { return r.name("fill", i) }
	// The fill goes on 16 clients, also when the run stops early; what it
	// leaves the run's cleanup deletes.
	defer func() {
		start := time.Now()
		res := r.timeConcurrent(len(fill), concurrency, false, func(i int) (int, error) { return r.deleteVolume(fill[i]) })
		phase(fmt.Sprintf("rbd scale: deleting the %d fill volumes at c%d", len(fill), concurrency), start)
		if len(res.errs) > 0 {
			b.Errorf("deleting the fill: %d failed: %v", len(res.errs), errSummary(res.errs))
		}
	}()
	for _, level := range levels {
		if have := len(fill); level > have {
			start := time.Now()
			ids := make([]string, level-have)
			res := r.timeConcurrent(level-have, concurrency, false, func(i int) (int, error) {
				id, retries, err := r.createVolume(fillName(have+i), nil)
				ids[i] = id
				return retries, err
			})
			for _, id := range ids {
				if id != "" {
					fill = append(fill, id)
				}
			}
			phase(fmt.Sprintf("rbd scale: filling the pool from %d to %d volumes at c%d (%.0f/s)", have, level, concurrency, res.rate()), start)
			if len(res.errs) > 0 {
				b.Fatalf("filling the pool: %d creates failed: %v", len(res.errs), errSummary(res.errs))
			}
		}
		start := time.Now()
		ids := make([]string, scaleN)
		var floorNames []string
		created := r.timeSequential(scaleN, func(i int) error {
			id, _, err := r.createVolume(r.name(fmt.Sprintf("at%d", level), i), nil)
			ids[i] = id
			return err
		}, func(i int) error {
			name := r.name(fmt.Sprintf("fat%d", level), i)
			floorNames = append(floorNames, name)
			return r.floorDo(name, func() error { return r.floor.createVolume(name) })
		})
		deleted := r.timeSequential(scaleN, func(i int) error {
			_, err := r.deleteVolume(ids[i])
			return err
		}, func(i int) error {
			if err := r.floor.deleteVolume(floorNames[i]); err != nil {
				return err
			}
			r.floorGone(floorNames[i])
			return nil
		})
		phase(fmt.Sprintf("rbd scale: %d creates and deletes with %d volumes in the pool", scaleN, level), start)
		rowsMu.Lock()
		scalePoints = append(scalePoints, scalePoint{volumes: level, create: created, delete: deleted})
		rowsMu.Unlock()
	}
	if err := writeScalePlot(filepath.Join(outDir(), "scale.png")); err != nil {
		b.Errorf("scale plot: %v", err)
	} else {
		note("scale plot: %s", filepath.Join(outDir(), "scale.png"))
	}
}

func printScale(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "scale: RBD CreateVolume and DeleteVolume, %d each, with N of our volumes already in pool %s\n", scaleN, rbdPool)
	fmt.Fprintf(w, "%8s %11s %11s %11s %6s %11s %11s %11s %6s\n",
		"volumes", "create p50", "create p99", "floor p50", "msgs", "delete p50", "delete p99", "floor p50", "msgs")
	for _, p := range scalePoints {
		fmt.Fprintf(w, "%8d %11s %11s %11s %6s %11s %11s %11s %6s\n", p.volumes,
			ms(p.create.d.median()), ms(p.create.d.p99()), ms(p.create.f.median()), count(medianOf(p.create.dMsgs)),
			ms(p.delete.d.median()), ms(p.delete.d.p99()), ms(p.delete.f.median()), count(medianOf(p.delete.dMsgs)))
	}
}

func scaleVerdicts() []verdict {
	var out []verdict
	for _, op := range []string{"CreateVolume", "DeleteVolume"} {
		v := verdict{area: "scale", want: fmt.Sprintf("%s p50 at 10000 volumes <= %.1fx p50 at 0", op, scaleMaxRatio)}
		var at0, atMax *scalePoint
		for i := range scalePoints {
			p := &scalePoints[i]
			if p.volumes == 0 {
				at0 = p
			}
			if p.volumes == 10000 {
				atMax = p
			}
		}
		if at0 != nil && atMax != nil {
			pick := func(p *scalePoint) time.Duration {
				if op == "CreateVolume" {
					return p.create.d.median()
				}
				return p.delete.d.median()
			}
			a, z := pick(at0), pick(atMax)
			ratio := float64(z) / float64(a)
			v.measured, v.met = true, ratio <= scaleMaxRatio
			v.got = fmt.Sprintf("%.2fx (%s at 10000, %s at 0)", ratio, ms(z), ms(a))
		}
		out = append(out, v)
	}
	return out
}

// writeScalePlot draws the curve, CreateVolume and DeleteVolume side by
// side: p50 and p99 of the driver, and the floor's p50, against the number
// of volumes in the pool.
func writeScalePlot(path string) error {
	rowsMu.Lock()
	points := append([]scalePoint(nil), scalePoints...)
	rowsMu.Unlock()
	if len(points) == 0 {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	series := func(f func(scalePoint) time.Duration) plotter.XYs {
		xy := make(plotter.XYs, len(points))
		for i, p := range points {
			xy[i].X = float64(p.volumes)
			xy[i].Y = float64(f(p)) / float64(time.Millisecond)
		}
		return xy
	}
	panel := func(op string, res func(scalePoint) seqResult) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("RBD %s (%s)", op, time.Now().UTC().Format("2006-01-02"))
		p.X.Label.Text = "our volumes already in the pool"
		p.Y.Label.Text = "latency (ms)"
		p.Y.Min = 0
		p.Legend.Top = true
		p.Legend.Left = true
		err := plotutil.AddLinePoints(p,
			"p50", series(func(s scalePoint) time.Duration { return res(s).d.median() }),
			"p99", series(func(s scalePoint) time.Duration { return res(s).d.p99() }),
			"floor p50", series(func(s scalePoint) time.Duration { return res(s).f.median() }),
		)
		if err != nil {
			return nil, err
		}
		// Room above the highest point for the legend.
		p.Y.Max *= 1.35
		return p, nil
	}
	create, err := panel("CreateVolume", func(s scalePoint) seqResult { return s.create })
	if err != nil {
		return err
	}
	del, err := panel("DeleteVolume", func(s scalePoint) seqResult { return s.delete })
	if err != nil {
		return err
	}
	img := vgimg.New(12*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 2, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8,
		PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	plots := [][]*plot.Plot{{create, del}}
	canvases := plot.Align(plots, tiles, dc)
	create.Draw(canvases[0][0])
	del.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
