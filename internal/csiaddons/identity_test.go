package csiaddons

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/csi-addons/spec/lib/go/identity"
)

// capNames spells capabilities as the csi-addons controller shows them in
// CSIAddonsNode status.
func capNames(t *testing.T, id *Identity) []string {
	t.Helper()
	resp, err := id.GetCapabilities(context.Background(), &identity.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range resp.GetCapabilities() {
		switch {
		case c.GetService() != nil:
			out = append(out, "service."+c.GetService().GetType().String())
		case c.GetReclaimSpace() != nil:
			out = append(out, "reclaim_space."+c.GetReclaimSpace().GetType().String())
		case c.GetNetworkFence() != nil:
			out = append(out, "network_fence."+c.GetNetworkFence().GetType().String())
		default:
			t.Errorf("unexpected capability %v", c)
		}
	}
	slices.Sort(out)
	return out
}

func TestCapabilitiesFollowFlags(t *testing.T) {
	for name, tc := range map[string]struct {
		id   Identity
		want string
	}{
		"rbd controller": {Identity{Controller: true, ReclaimSpace: true},
			"reclaim_space.OFFLINE service.CONTROLLER_SERVICE"},
		"rbd controller with fencing": {Identity{Controller: true, ReclaimSpace: true, Fencing: true},
			"network_fence.NETWORK_FENCE reclaim_space.OFFLINE service.CONTROLLER_SERVICE"},
		"rbd node": {Identity{Node: true, ReclaimSpace: true},
			"reclaim_space.ONLINE service.NODE_SERVICE"},
		"rbd node with fencing": {Identity{Node: true, ReclaimSpace: true, Fencing: true},
			"network_fence.GET_CLIENTS_TO_FENCE reclaim_space.ONLINE service.NODE_SERVICE"},
		"rbd both": {Identity{Controller: true, Node: true, ReclaimSpace: true},
			"reclaim_space.OFFLINE reclaim_space.ONLINE service.CONTROLLER_SERVICE service.NODE_SERVICE"},
		"cephfs controller": {Identity{Controller: true}, "service.CONTROLLER_SERVICE"},
		"cephfs controller with fencing": {Identity{Controller: true, Fencing: true},
			"network_fence.NETWORK_FENCE service.CONTROLLER_SERVICE"},
		"cephfs node": {Identity{Node: true}, "service.NODE_SERVICE"},
	} {
		if got := strings.Join(capNames(t, &tc.id), " "); got != tc.want {
			t.Errorf("%s: capabilities %q, want %q", name, got, tc.want)
		}
	}
}

func TestIdentityAndProbe(t *testing.T) {
	id := &Identity{Name: "rbd.csi.ceph.com", Version: "v1.2.3"}
	got, err := id.GetIdentity(context.Background(), &identity.GetIdentityRequest{})
	if err != nil || got.GetName() != "rbd.csi.ceph.com" || got.GetVendorVersion() != "v1.2.3" {
		t.Fatalf("GetIdentity = %v, %v", got, err)
	}
	p, err := id.Probe(context.Background(), &identity.ProbeRequest{})
	if err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", p, err)
	}
}
