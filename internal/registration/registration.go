// Package registration registers the node plugin with the kubelet, in place
// of the node-driver-registrar sidecar: it serves the kubelet's plugin
// registration API (pluginregistration/v1) on a socket in the kubelet's
// plugins_registry directory. The kubelet watches that directory, calls
// GetInfo on every socket that appears there, dials the CSI endpoint the
// answer names, and reports the outcome with NotifyRegistrationStatus. When
// the socket goes away the kubelet deregisters the driver.
package registration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// supportedVersions are the CSI versions the kubelet may speak to us.
var supportedVersions = []string{"1.0.0"}

// RegistryDir is the kubelet's plugin registration directory for a kubelet
// whose plugin directory is pluginDir: plugins_registry next to plugins.
func RegistryDir(pluginDir string) string {
	return filepath.Join(filepath.Dir(filepath.Clean(pluginDir)), "plugins_registry")
}

// SocketPath is where the registration socket of driver lives in dir.
func SocketPath(dir, driver string) string {
	return filepath.Join(dir, driver+"-reg.sock")
}

// Server is a running registration endpoint.
type Server struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string
	socket   string
	grpc     *grpc.Server

	mu         sync.Mutex
	registered bool
	lastErr    string
}

// Start serves the registration API for driver on socket. endpoint is the
// path of the driver's CSI socket as the kubelet sees it (the value the
// node-driver-registrar takes as --kubelet-registration-path). Start must
// follow the CSI server's Listen: the kubelet dials endpoint at once.
func Start(socket, driver, endpoint string) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("removing stale registration socket %s: %w", socket, err)
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", socket, err)
	}
	s := &Server{driver: driver, endpoint: endpoint, socket: socket, grpc: grpc.NewServer()}
	registerapi.RegisterRegistrationServer(s.grpc, s)
	go func() {
		if err := s.grpc.Serve(lis); err != nil {
			klog.ErrorS(err, "registration server stopped", "socket", socket)
		}
	}()
	klog.InfoS("serving kubelet plugin registration", "socket", socket, "endpoint", endpoint)
	return s, nil
}

// GetInfo implements registerapi.RegistrationServer.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: supportedVersions,
	}, nil
}

// NotifyRegistrationStatus implements registerapi.RegistrationServer. A
// refusal is logged; the kubelet retries on its own while the socket stays.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.registered, s.lastErr = st.GetPluginRegistered(), st.GetError()
	s.mu.Unlock()
	if st.GetPluginRegistered() {
		klog.InfoS("registered with the kubelet", "driver", s.driver)
	} else {
		klog.ErrorS(nil, "the kubelet refused the registration", "driver", s.driver, "error", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Registered reports the kubelet's last answer: whether the driver is
// registered, and the error it gave otherwise.
func (s *Server) Registered() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered, s.lastErr
}

// Stop stops serving and removes the socket, which makes the kubelet
// deregister the driver.
func (s *Server) Stop() {
	s.grpc.Stop()
	if err := os.Remove(s.socket); err != nil && !os.IsNotExist(err) {
		klog.ErrorS(err, "removing the registration socket", "socket", s.socket)
	}
}
