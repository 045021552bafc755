package csiaddons

import (
	"context"

	fencepb "github.com/csi-addons/spec/lib/go/fence"
	"k8s.io/klog/v2"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/fence"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
)

// Fence serves the CSI-Addons FenceController with --enable-fencing: the
// controller sets, removes and lists network fences (OSD blocklist ranges);
// the node reports the address it reaches the cluster from, so that the
// csi-addons controller knows what to fence when the node is lost. Each
// side answers only what it advertises.
type Fence struct {
	fencepb.UnimplementedFenceControllerServer
	*service.Deps
	Controller, Node bool
	// Secrets are the secret key pairs to take the credentials from, the
	// first present wins (RBD: userID/userKey; CephFS: adminID/adminKey,
	// then userID/userKey).
	Secrets [][2]string
}

// connect opens the cluster a fencing request names with its secret.
func (f *Fence) connect(params, secrets map[string]string) (*cephconn.Conn, error) {
	clusterID := params["clusterID"]
	if clusterID == "" {
		return nil, csierr.Field("parameters.clusterID", "is required")
	}
	creds, err := request.Credentials(secrets, f.Secrets...)
	if err != nil {
		return nil, err
	}
	_, conn, err := f.Connect(clusterID, creds)
	return conn, err
}

func (f *Fence) controllerOnly(method string) error {
	if !f.Controller {
		return csierr.Errorf(csierr.ErrUnimplemented, "%s is served by the controller plugin, not the node plugin", method)
	}
	return nil
}

// FenceClusterNetwork implements fence.FenceControllerServer: every client
// in the CIDR blocks loses access to the OSDs (and, through them, to its
// RBD images and CephFS data) until UnfenceClusterNetwork.
func (f *Fence) FenceClusterNetwork(ctx context.Context, req *fencepb.FenceClusterNetworkRequest) (*fencepb.FenceClusterNetworkResponse, error) {
	if err := f.controllerOnly("FenceClusterNetwork"); err != nil {
		return nil, err
	}
	cidrs, err := fence.ParseCIDRs("cidrs", cidrTexts(req.GetCidrs()))
	if err != nil {
		return nil, err
	}
	conn, err := f.connect(req.GetParameters(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	logger := klog.FromContext(ctx)
	if own, err := fence.ClientAddress(conn); err == nil {
		for _, c := range cidrs {
			if c.Prefix.Overlaps(own) {
				logger.Info("the fence covers this plugin's own address: its Ceph I/O stops too until the fence is removed",
					"cidr", c.Text, "address", own.Addr().String())
			}
		}
	}
	if err := fence.New(conn).Fence(cidrs); err != nil {
		return nil, err
	}
	logger.Info("network fenced", "cidrs", texts(cidrs))
	return &fencepb.FenceClusterNetworkResponse{}, nil
}

// UnfenceClusterNetwork implements fence.FenceControllerServer.
func (f *Fence) UnfenceClusterNetwork(ctx context.Context, req *fencepb.UnfenceClusterNetworkRequest) (*fencepb.UnfenceClusterNetworkResponse, error) {
	if err := f.controllerOnly("UnfenceClusterNetwork"); err != nil {
		return nil, err
	}
	cidrs, err := fence.ParseCIDRs("cidrs", cidrTexts(req.GetCidrs()))
	if err != nil {
		return nil, err
	}
	conn, err := f.connect(req.GetParameters(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if err := fence.New(conn).Unfence(cidrs); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("network unfenced", "cidrs", texts(cidrs))
	return &fencepb.UnfenceClusterNetworkResponse{}, nil
}

// ListClusterFence implements fence.FenceControllerServer.
func (f *Fence) ListClusterFence(_ context.Context, req *fencepb.ListClusterFenceRequest) (*fencepb.ListClusterFenceResponse, error) {
	if err := f.controllerOnly("ListClusterFence"); err != nil {
		return nil, err
	}
	conn, err := f.connect(req.GetParameters(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	list, err := fence.New(conn).List()
	if err != nil {
		return nil, err
	}
	resp := &fencepb.ListClusterFenceResponse{}
	for _, c := range list {
		resp.Cidrs = append(resp.Cidrs, &fencepb.CIDR{Cidr: c})
	}
	return resp, nil
}

// GetFenceClients implements fence.FenceControllerServer on the node: the
// cluster's FSID names the client (as with ceph-csi), and its address is
// the one this node's plugin reaches the cluster from.
func (f *Fence) GetFenceClients(_ context.Context, req *fencepb.GetFenceClientsRequest) (*fencepb.GetFenceClientsResponse, error) {
	if !f.Node {
		return nil, csierr.Errorf(csierr.ErrUnimplemented, "GetFenceClients is served by the node plugin, which knows the node's address")
	}
	conn, err := f.connect(req.GetParameters(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	fsid, err := conn.GetFSID()
	if err != nil {
		return nil, err
	}
	addr, err := fence.ClientAddress(conn)
	if err != nil {
		return nil, err
	}
	return &fencepb.GetFenceClientsResponse{Clients: []*fencepb.ClientDetails{
		{Id: fsid, Addresses: []*fencepb.CIDR{{Cidr: addr.String()}}},
	}}, nil
}

func cidrTexts(cs []*fencepb.CIDR) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.GetCidr()
	}
	return out
}

func texts(cs []fence.CIDR) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Text
	}
	return out
}
