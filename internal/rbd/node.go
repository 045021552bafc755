package rbd

import (
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/leanceph/cephcsi/internal/common"
)

// NodeServer serves the CSI node service for RBD.
type NodeServer struct {
	csi.UnimplementedNodeServer
	*common.Deps
}

// NewNodeServer returns the node service.
func NewNodeServer(d *common.Deps) (*NodeServer, error) {
	return &NodeServer{Deps: d}, nil
}
