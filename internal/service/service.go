// Package service holds what every CSI service of the driver is built on:
// the options, config.json, the cached Ceph connections and the operation
// locks.
package service

import (
	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/locks"
)

// Deps are the long-lived pieces every service uses.
type Deps struct {
	Options  *config.Options
	Clusters *config.Clusters
	Conns    *cephconn.Pool
	// Locks serialises work on one request name or volume ID. The server
	// takes the keys a request names before the handler runs; handlers
	// take only the keys they learn on the way (Lock).
	Locks *locks.Set
}

// Lock takes more operation locks, or fails with ErrInProgress (Aborted,
// which the sidecars retry) when another call holds one of them.
func (d *Deps) Lock(keys ...locks.Key) (release func(), err error) {
	return d.Locks.Acquire(keys...)
}

// Connect returns the cluster entry for clusterID and a connection to it
// with creds. An unknown clusterID is InvalidArgument; a refused key
// PermissionDenied; an unreachable cluster Unavailable.
func (d *Deps) Connect(clusterID string, creds cephconn.Credentials) (*config.Cluster, *cephconn.Conn, error) {
	cl, err := d.Clusters.Get(clusterID)
	if err != nil {
		return nil, nil, csierr.Errorf(csierr.ErrInvalid, "clusterID %q: %w", clusterID, err)
	}
	conn, err := d.Conns.Get(cl.Monitors, creds)
	if err != nil {
		return nil, nil, err
	}
	return cl, conn, nil
}
