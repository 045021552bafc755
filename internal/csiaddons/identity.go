// Package csiaddons serves the CSI-Addons API (github.com/csi-addons/spec)
// next to CSI, on --csi-addons-endpoint: the Identity service that tells
// the csi-addons sidecar what this process offers, network fencing through
// OSD blocklist entries, and the registration of the ReclaimSpace services
// the RBD package implements.
package csiaddons

import (
	"context"

	"github.com/csi-addons/spec/lib/go/fence"
	"github.com/csi-addons/spec/lib/go/identity"
	"github.com/csi-addons/spec/lib/go/reclaimspace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Identity serves the CSI-Addons Identity service.
type Identity struct {
	identity.UnimplementedIdentityServer
	Name    string
	Version string
	// Controller and Node say which side this process serves.
	Controller, Node bool
	// ReclaimSpace: the driver reclaims space (RBD): sparsify on the
	// controller, fstrim on the node.
	ReclaimSpace bool
	// Fencing is --enable-fencing: network fences on the controller, the
	// node's own client address on the node.
	Fencing bool
}

// GetIdentity implements identity.IdentityServer.
func (i *Identity) GetIdentity(context.Context, *identity.GetIdentityRequest) (*identity.GetIdentityResponse, error) {
	return &identity.GetIdentityResponse{Name: i.Name, VendorVersion: i.Version}, nil
}

// GetCapabilities implements identity.IdentityServer: only what this
// process serves, so that the csi-addons controller sends each request to
// a plugin that can answer it.
func (i *Identity) GetCapabilities(context.Context, *identity.GetCapabilitiesRequest) (*identity.GetCapabilitiesResponse, error) {
	var caps []*identity.Capability
	service := func(t identity.Capability_Service_Type) {
		caps = append(caps, &identity.Capability{Type: &identity.Capability_Service_{Service: &identity.Capability_Service{Type: t}}})
	}
	reclaim := func(t identity.Capability_ReclaimSpace_Type) {
		caps = append(caps, &identity.Capability{Type: &identity.Capability_ReclaimSpace_{ReclaimSpace: &identity.Capability_ReclaimSpace{Type: t}}})
	}
	fencing := func(t identity.Capability_NetworkFence_Type) {
		caps = append(caps, &identity.Capability{Type: &identity.Capability_NetworkFence_{NetworkFence: &identity.Capability_NetworkFence{Type: t}}})
	}
	if i.Controller {
		service(identity.Capability_Service_CONTROLLER_SERVICE)
		if i.ReclaimSpace {
			reclaim(identity.Capability_ReclaimSpace_OFFLINE)
		}
		if i.Fencing {
			fencing(identity.Capability_NetworkFence_NETWORK_FENCE)
		}
	}
	if i.Node {
		service(identity.Capability_Service_NODE_SERVICE)
		if i.ReclaimSpace {
			reclaim(identity.Capability_ReclaimSpace_ONLINE)
		}
		if i.Fencing {
			fencing(identity.Capability_NetworkFence_GET_CLIENTS_TO_FENCE)
		}
	}
	return &identity.GetCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe implements identity.IdentityServer. The sidecar probes once at
// start and exits when the driver does not answer; nothing here needs to
// warm up first.
func (i *Identity) Probe(context.Context, *identity.ProbeRequest) (*identity.ProbeResponse, error) {
	return &identity.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// Services are the CSI-Addons services one process serves; nil ones are
// left out (a call to them answers Unimplemented).
type Services struct {
	Identity          *Identity
	ReclaimController reclaimspace.ReclaimSpaceControllerServer
	ReclaimNode       reclaimspace.ReclaimSpaceNodeServer
	Fence             fence.FenceControllerServer
}

// Register adds the services to a gRPC server.
func (s Services) Register(g grpc.ServiceRegistrar) {
	if s.Identity != nil {
		identity.RegisterIdentityServer(g, s.Identity)
	}
	if s.ReclaimController != nil {
		reclaimspace.RegisterReclaimSpaceControllerServer(g, s.ReclaimController)
	}
	if s.ReclaimNode != nil {
		reclaimspace.RegisterReclaimSpaceNodeServer(g, s.ReclaimNode)
	}
	if s.Fence != nil {
		fence.RegisterFenceControllerServer(g, s.Fence)
	}
}
