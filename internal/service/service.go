// Package service holds what every CSI service of the driver is built on:
// the options, config.json, the cached Ceph connections and the operation
// locks.
package service

import (
	"context"
	"sync"

	"github.com/leanceph/cephcsi/internal/cephconn"
	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/kms"
	"github.com/leanceph/cephcsi/internal/kube"
	"github.com/leanceph/cephcsi/internal/locks"
	"github.com/leanceph/cephcsi/internal/topology"
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
	// Labels reads the node's Kubernetes labels; nil for the Kubernetes API
	// (tests give a fake).
	Labels func(ctx context.Context) (map[string]string, error)
	// KubeObjects reads the Secrets and ConfigMaps KMS configurations
	// name; nil for the Kubernetes API (tests give a fake).
	KubeObjects KubeReader

	kubeOnce sync.Once
	kube     KubeReader

	labelsOnce sync.Once
	labels     map[string]string
	labelsErr  error
}

// KubeReader reads Kubernetes Secrets and ConfigMaps.
type KubeReader interface {
	SecretData(ctx context.Context, namespace, name string) (map[string][]byte, error)
	ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error)
}

// Kube returns KubeObjects, or a client of the Kubernetes API (connected
// on first use, through --kubeconfig or the pod's service account).
func (d *Deps) Kube() KubeReader {
	d.kubeOnce.Do(func() {
		d.kube = d.KubeObjects
		if d.kube == nil {
			d.kube = &kube.Client{Kubeconfig: d.Options.Kubeconfig}
		}
	})
	return d.kube
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

// NodeLabels returns this node's Kubernetes labels, read once per process
// (through Labels, or the Kubernetes API).
func (d *Deps) NodeLabels(ctx context.Context) (map[string]string, error) {
	d.labelsOnce.Do(func() {
		read := d.Labels
		if read == nil {
			client := &kube.Client{Kubeconfig: d.Options.Kubeconfig}
			read = func(ctx context.Context) (map[string]string, error) { return client.NodeLabels(ctx, d.Options.NodeID) }
		}
		d.labels, d.labelsErr = read(ctx)
	})
	return d.labels, d.labelsErr
}

// NodeTopology returns the node's topology segments of --domainlabels, nil
// when topology is off.
func (d *Deps) NodeTopology(ctx context.Context) (map[string]string, error) {
	if len(d.Options.DomainLabels) == 0 {
		return nil, nil
	}
	labels, err := d.NodeLabels(ctx)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrUnavailable, "reading the labels of node %q for --domainlabels: %w", d.Options.NodeID, err)
	}
	seg, err := topology.ForNode(labels, d.Options.DomainLabels, d.Options.DriverName)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrPrecondition, "node %q: %w", d.Options.NodeID, err)
	}
	return seg, nil
}

// CrushLocation returns where the node sits in the CRUSH map for reads of
// the cluster cl to be served by the nearest OSDs, nil when read affinity
// is off (neither --enable-read-affinity nor config.json's readAffinity)
// or no crush location label is on the node.
func (d *Deps) CrushLocation(ctx context.Context, cl *config.Cluster) (map[string]string, error) {
	if !d.Options.EnableReadAffinity && !cl.ReadAffinity.Enabled {
		return nil, nil
	}
	labels, err := d.NodeLabels(ctx)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrUnavailable, "reading the labels of node %q for read affinity: %w", d.Options.NodeID, err)
	}
	return topology.CrushLocation(labels, cl.CrushLocationLabels(d.Options.CrushLocationLabels)), nil
}

// KMSEnv is what the KMS of a volume owned by owner (its PVC namespace, ""
// when unknown) is built with, given the request's secrets.
func (d *Deps) KMSEnv(secrets map[string]string, owner string) kms.Env {
	env := kms.Env{ConfigPath: d.Options.KMSConfigPath, Secrets: secrets, Tenant: owner, Namespace: kms.PodNamespace()}
	if k := d.Kube(); k != nil {
		env.Kube = k
	}
	return env
}
