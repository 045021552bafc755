package server

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/locks"
)

type observed struct {
	method string
	code   codes.Code
	took   time.Duration
}

// recorder is a CallObserver that keeps what it was told.
type recorder struct {
	mu       sync.Mutex
	inFlight map[string]int
	peak     int
	done     []observed
}

func (r *recorder) CallStarted(m string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight[m]++
	r.peak = max(r.peak, r.inFlight[m])
}

func (r *recorder) CallFinished(m string, c codes.Code, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight[m]--
	r.done = append(r.done, observed{m, c, took})
}

// controller answers CreateVolume by the request name: an error of a kind,
// a panic, a slow success.
type controller struct {
	csi.UnimplementedControllerServer
	release chan struct{}
}

func (c *controller) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	switch name := req.GetName(); {
	case name == "missing":
		return nil, csierr.Errorf(csierr.ErrNotFound, "no such thing")
	case name == "panic":
		panic("boom")
	case strings.HasPrefix(name, "slow"):
		<-c.release
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: "v"}}, nil
}

// The observer sees each call once, with the code the client gets (the
// kind of error at the edge, Internal for a panic) and calls in flight.
func TestCallsObservedWithTheirCodes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{inFlight: map[string]int{}}
	ctrl := &controller{release: make(chan struct{})}
	srv := New(lis, Services{Identity: &Identity{Name: "x"}, Controller: ctrl}, &locks.Set{}, WithCallObserver(rec))
	go func() { _ = srv.Serve() }()
	defer srv.Stop(context.Background())
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cc := csi.NewControllerClient(conn)
	ctx := context.Background()
	want := map[string]codes.Code{"ok": codes.OK, "missing": codes.NotFound, "panic": codes.Internal}
	for name, code := range want {
		_, err := cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name})
		if status.Code(err) != code {
			t.Errorf("%s: client got %v, want %v", name, status.Code(err), code)
		}
	}
	var wg sync.WaitGroup
	for _, name := range []string{"slow-1", "slow-2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name})
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec.mu.Lock()
		n := rec.inFlight["/csi.v1.Controller/CreateVolume"]
		rec.mu.Unlock()
		if n == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(ctrl.release)
	wg.Wait()
	if _, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	got := map[codes.Code]int{}
	for _, o := range rec.done {
		if o.method == "/csi.v1.Controller/CreateVolume" {
			got[o.code]++
		}
	}
	if got[codes.OK] != 3 || got[codes.NotFound] != 1 || got[codes.Internal] != 1 {
		t.Errorf("codes observed: %v", got)
	}
	if rec.inFlight["/csi.v1.Controller/CreateVolume"] != 0 || rec.peak != 2 {
		t.Errorf("in flight at the end %d, peak %d (want 0 and 2)", rec.inFlight["/csi.v1.Controller/CreateVolume"], rec.peak)
	}
	if last := rec.done[len(rec.done)-1]; last.method != "/csi.v1.Identity/Probe" || last.code != codes.OK {
		t.Errorf("last call observed: %+v", last)
	}
	methods := srv.Methods()
	if !contains(methods, "/csi.v1.Controller/CreateVolume") || !contains(methods, "/csi.v1.Identity/Probe") || contains(methods, "/csi.v1.Node/NodeStageVolume") {
		t.Errorf("methods served: %v", methods)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
