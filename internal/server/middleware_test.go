package server

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-addons/spec/lib/go/fence"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/locks"
)

// captureLogs sends klog output at verbosity 2 into a buffer for one test.
func captureLogs(t *testing.T) *bytes.Buffer {
	t.Helper()
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", "2")
	_ = fs.Set("logtostderr", "false")
	var buf bytes.Buffer
	klog.SetOutput(&buf)
	t.Cleanup(func() { _ = fs.Set("v", "0"); _ = fs.Set("logtostderr", "true") })
	return &buf
}

func chain(handler grpc.UnaryHandler) grpc.UnaryHandler {
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/CreateVolume"}
	return func(ctx context.Context, req any) (any, error) {
		return withRequestID(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return logCalls(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				return recoverPanics(ctx, req, info, handler)
			})
		})
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	buf := captureLogs(t)
	key := "AQ" + strings.Repeat("SECRET", 6) + "=="
	h := chain(func(ctx context.Context, req any) (any, error) {
		klog.FromContext(ctx).Info("inside handler")
		return &csi.CreateVolumeResponse{}, nil
	})
	_, err := h(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-1", Secrets: map[string]string{"userKey": key}})
	if err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	out := buf.String()
	if strings.Contains(out, key) {
		t.Fatalf("secret in logs:\n%s", out)
	}
	if !strings.Contains(out, "pvc-1") {
		t.Fatalf("request not logged:\n%s", out)
	}
	// Every line of the call carries the same request ID.
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		i := strings.Index(line, `req="`)
		if i < 0 {
			t.Fatalf("line without request ID: %s", line)
		}
		ids = append(ids, line[i:i+18])
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("request IDs differ within one call: %v", ids)
		}
	}
}

// The CSI-Addons requests carry secrets too (the NetworkFenceClass's, the
// PV's node-stage secret): they are stripped the same way.
func TestAddonsSecretsNeverLogged(t *testing.T) {
	buf := captureLogs(t)
	key := "AQ" + strings.Repeat("ADDONS", 6) + "=="
	info := &grpc.UnaryServerInfo{FullMethod: "/fence.FenceController/FenceClusterNetwork"}
	for _, req := range []any{
		&fence.FenceClusterNetworkRequest{Parameters: map[string]string{"clusterID": "c1"}, Secrets: map[string]string{"userKey": key},
			Cidrs: []*fence.CIDR{{Cidr: "10.96.1.0/24"}}},
		&fence.GetFenceClientsRequest{Secrets: map[string]string{"adminKey": key}},
		&reclaimspace.ControllerReclaimSpaceRequest{VolumeId: "vol-1", Secrets: map[string]string{"userKey": key}},
		&reclaimspace.NodeReclaimSpaceRequest{VolumeId: "vol-2", Secrets: map[string]string{"userKey": key}},
	} {
		_, err := withRequestID(context.Background(), req, info, func(ctx context.Context, req any) (any, error) {
			return logCalls(ctx, req, info, func(context.Context, any) (any, error) { return nil, errors.New("refused") })
		})
		if err == nil {
			t.Fatal("the handler's error was lost")
		}
	}
	klog.Flush()
	out := buf.String()
	if strings.Contains(out, key) {
		t.Fatalf("secret in logs:\n%s", out)
	}
	for _, want := range []string{"10.96.1.0/24", "vol-1", "vol-2", "***stripped***"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	captureLogs(t)
	h := chain(func(context.Context, any) (any, error) { panic("boom") })
	_, err := h(context.Background(), &csi.CreateVolumeRequest{})
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panic returned %v, want Internal", err)
	}
}

func TestIdentity(t *testing.T) {
	id := &Identity{Name: "rbd.csi.ceph.com", Controller: true}
	info, _ := id.GetPluginInfo(context.Background(), nil)
	if info.GetName() != "rbd.csi.ceph.com" {
		t.Fatalf("name = %q", info.GetName())
	}
	caps, _ := id.GetPluginCapabilities(context.Background(), nil)
	var controller, expansion bool
	for _, c := range caps.GetCapabilities() {
		controller = controller || c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE
		expansion = expansion || c.GetVolumeExpansion().GetType() == csi.PluginCapability_VolumeExpansion_ONLINE
	}
	if !controller || !expansion {
		t.Fatalf("capabilities = %v", caps)
	}
	p, _ := id.Probe(context.Background(), nil)
	if !p.GetReady().GetValue() {
		t.Fatal("not ready")
	}
}

func TestSlowCallsLoggedUntilTheyEnd(t *testing.T) {
	buf := captureLogs(t)
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodeStageVolume"}
	release := make(chan struct{})
	slow := func(ctx context.Context, req any) (any, error) {
		klog.FromContext(ctx).Info("handler started")
		<-release
		return &csi.NodeStageVolumeResponse{}, nil
	}
	h := func(ctx context.Context, req any) (any, error) {
		return withRequestID(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return logSlowCalls(50*time.Millisecond)(ctx, req, info, slow)
		})
	}
	errc := make(chan error, 1)
	start := time.Now()
	go func() { _, err := h(context.Background(), &csi.NodeStageVolumeRequest{}); errc <- err }()

	// Let the call run for several intervals.
	time.Sleep(280 * time.Millisecond)
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	klog.Flush()
	atEnd := buf.String()
	time.Sleep(200 * time.Millisecond)
	klog.Flush()
	if after := buf.String(); after != atEnd {
		t.Fatalf("logged after the call ended:\n%s", after[len(atEnd):])
	}

	var id string
	running := 0
	for _, line := range strings.Split(strings.TrimSpace(atEnd), "\n") {
		i := strings.Index(line, `req="`)
		if i < 0 {
			t.Fatalf("line without request ID: %s", line)
		}
		if id == "" {
			id = line[i : i+18]
		} else if line[i:i+18] != id {
			t.Fatalf("request IDs differ within one call:\n%s", atEnd)
		}
		if strings.Contains(line, "call still running") {
			if !strings.Contains(line, `method="/csi.v1.Node/NodeStageVolume"`) {
				t.Errorf("slow-call line without the method: %s", line)
			}
			running++
		}
	}
	// One line per interval the call outlived: never more, and on a busy
	// machine a late timer may cost a few.
	if most := int(elapsed/(50*time.Millisecond)) + 1; running < 2 || running > most {
		t.Fatalf("%d slow-call lines for a call of %s (at most %d):\n%s", running, elapsed, most, atEnd)
	}
}

func TestFastCallsNotLoggedAsSlow(t *testing.T) {
	buf := captureLogs(t)
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Identity/Probe"}
	for i := 0; i < 20; i++ {
		_, err := withRequestID(context.Background(), nil, info, func(ctx context.Context, req any) (any, error) {
			return logSlowCalls(50*time.Millisecond)(ctx, req, info, func(context.Context, any) (any, error) {
				time.Sleep(5 * time.Millisecond)
				return &csi.ProbeResponse{}, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	klog.Flush()
	if strings.Contains(buf.String(), "call still running") {
		t.Fatalf("a fast call was logged as slow:\n%s", buf.String())
	}
}

// A handler stuck past the call's deadline (a Ceph call in C): the call is
// answered DeadlineExceeded at the deadline, the handler's locks stay held
// while it runs (a retry answers Aborted, not racing it), and are free once
// it returns.
func TestAnswerByDeadline(t *testing.T) {
	set := &locks.Set{}
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/DeleteVolume"}
	unblock := make(chan struct{})
	ended := make(chan struct{})
	stuck := func(ctx context.Context, req any) (any, error) {
		<-unblock
		defer close(ended)
		return &csi.DeleteVolumeResponse{}, nil
	}
	call := func(ctx context.Context, h grpc.UnaryHandler) error {
		_, err := toStatus(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol-1"}, info, func(ctx context.Context, req any) (any, error) {
			return answerByDeadline(ctx, req, info, func(ctx context.Context, req any) (any, error) {
				return locks.Interceptor(set)(ctx, req, info, h)
			})
		})
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := call(ctx, stuck)
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
		t.Fatalf("stuck call answered %v after %s, want DeadlineExceeded at its deadline", err, time.Since(start))
	}
	quick := func(ctx context.Context, req any) (any, error) { return &csi.DeleteVolumeResponse{}, nil }
	if err := call(context.Background(), quick); status.Code(err) != codes.Aborted {
		t.Fatalf("retry while the first call runs: %v, want Aborted", err)
	}
	close(unblock)
	<-ended
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := call(context.Background(), quick)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retry after the first call ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A handler that returns in time is answered as it returned.
	if err := call(context.Background(), func(context.Context, any) (any, error) {
		return nil, status.Error(codes.NotFound, "gone")
	}); status.Code(err) != codes.NotFound {
		t.Fatalf("prompt handler's answer: %v", err)
	}
}
