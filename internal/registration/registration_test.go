package registration

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

func TestRegistryDir(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/kubelet/plugins":  "/var/lib/kubelet/plugins_registry",
		"/var/lib/kubelet/plugins/": "/var/lib/kubelet/plugins_registry",
		"/k/plugins":                "/k/plugins_registry",
	} {
		if got := RegistryDir(in); got != want {
			t.Errorf("RegistryDir(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestServerAsTheKubeletSeesIt calls the socket as the kubelet's plugin
// watcher does: GetInfo, then NotifyRegistrationStatus; Stop removes the
// socket, which is how the kubelet learns that the driver left.
func TestServerAsTheKubeletSeesIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plugins_registry")
	sock := SocketPath(dir, "rbd.csi.ceph.com")
	// A stale socket file from an earlier run is replaced.
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Start(sock, "rbd.csi.ceph.com", "/var/lib/kubelet/plugins/rbd.csi.ceph.com/csi.sock")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }() // a client connection; nothing to flush
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := registerapi.NewRegistrationClient(conn)
	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "rbd.csi.ceph.com" ||
		info.Endpoint != "/var/lib/kubelet/plugins/rbd.csi.ceph.com/csi.sock" ||
		len(info.SupportedVersions) != 1 || info.SupportedVersions[0] != "1.0.0" {
		t.Fatalf("GetInfo = %+v", info)
	}
	if ok, _ := s.Registered(); ok {
		t.Fatal("registered before the kubelet said so")
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "bad version"}); err != nil {
		t.Fatal(err)
	}
	if ok, msg := s.Registered(); ok || msg != "bad version" {
		t.Fatalf("after a refusal: registered %v, error %q", ok, msg)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, msg := s.Registered(); !ok || msg != "" {
		t.Fatalf("after the registration: registered %v, error %q", ok, msg)
	}
	s.Stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket still there after Stop: %v", err)
	}
}
