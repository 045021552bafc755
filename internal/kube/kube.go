// Package kube reaches the Kubernetes API for the little the driver reads
// from it: a node's labels (topology, read affinity), and the Secrets and
// ConfigMaps that KMS configurations name (encrypted volumes); and for
// `cephcsi inspect`, lists of PVs, PVCs and snapshot objects. It uses the
// pod's service account, or a kubeconfig file when one is named
// (--kubeconfig, or the KUBERNETES_CONFIG_PATH environment variable
// ceph-csi reads).
//
// It speaks plain JSON over client-go's authenticated transport rather than
// through the generated clientset: the clientset links and registers every
// API group, which cost the driver about 10 MiB of resident memory for the
// three objects it reads.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ConfigPathEnv names a kubeconfig file when --kubeconfig is not given.
const ConfigPathEnv = "KUBERNETES_CONFIG_PATH"

var (
	// ErrConfig marks a client that could not be configured (a bad
	// kubeconfig, no service account).
	ErrConfig = errors.New("configuring the Kubernetes client")
	// ErrNotFound marks an object or a resource type the API server does
	// not have.
	ErrNotFound = errors.New("not found")
)

// Client reads from the Kubernetes API; it connects on first use.
type Client struct {
	// Kubeconfig is a kubeconfig file; "" for $KUBERNETES_CONFIG_PATH or,
	// without it, the in-cluster service account.
	Kubeconfig string
	// Config, when set, is used instead of Kubeconfig (tests).
	Config *rest.Config

	once sync.Once
	http *http.Client
	base *url.URL
	err  error
}

func (c *Client) connect() error {
	c.once.Do(func() {
		cfg := c.Config
		if cfg == nil {
			path := c.Kubeconfig
			if path == "" {
				path = os.Getenv(ConfigPathEnv)
			}
			var err error
			if path != "" {
				cfg, err = clientcmd.BuildConfigFromFlags("", path)
			} else {
				cfg, err = rest.InClusterConfig()
			}
			if err != nil {
				c.err = fmt.Errorf("%w: %w", ErrConfig, err)
				return
			}
		}
		base, err := url.Parse(cfg.Host)
		if err == nil && base.Host == "" {
			// A bare host:port, as kubeconfigs sometimes hold.
			base, err = url.Parse("https://" + cfg.Host)
		}
		if err != nil {
			c.err = fmt.Errorf("%w: server %q: %w", ErrConfig, cfg.Host, err)
			return
		}
		if c.http, err = rest.HTTPClientFor(cfg); err != nil {
			c.err = fmt.Errorf("%w: %w", ErrConfig, err)
			return
		}
		c.base = base
	})
	return c.err
}

// get reads the object at path (below the server's root, e.g.
// /api/v1/nodes/x, segments escaped) into out.
func (c *Client) get(ctx context.Context, path string, query url.Values, out any) error {
	if err := c.connect(); err != nil {
		return err
	}
	// path comes with its segments escaped.
	plain, err := url.PathUnescape(path)
	if err != nil {
		return err
	}
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + plain
	u.RawPath = strings.TrimSuffix(c.base.EscapedPath(), "/") + path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }() // read to the end below
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		// The API server explains itself in a Status object.
		var st struct {
			Message string `json:"message"`
		}
		msg := resp.Status
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %s", ErrNotFound, msg)
		}
		return fmt.Errorf("%s (HTTP %d)", msg, resp.StatusCode)
	}
	return json.Unmarshal(body, out)
}

// Meta is the part of an object's metadata the driver reads.
type Meta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	UID       string            `json:"uid"`
	Labels    map[string]string `json:"labels"`
}

// List reads every object of a collection (e.g. /api/v1/persistentvolumes)
// a page at a time and hands each to add, decoded into a new T.
func List[T any](ctx context.Context, c *Client, path string, add func(*T)) error {
	q := url.Values{"limit": {"500"}}
	for {
		var page struct {
			Items    []T `json:"items"`
			Metadata struct {
				Continue string `json:"continue"`
			} `json:"metadata"`
		}
		if err := c.get(ctx, path, q, &page); err != nil {
			return err
		}
		for i := range page.Items {
			add(&page.Items[i])
		}
		if page.Metadata.Continue == "" {
			return nil
		}
		q.Set("continue", page.Metadata.Continue)
	}
}

// NodeLabels returns the labels of the named node.
func (c *Client) NodeLabels(ctx context.Context, node string) (map[string]string, error) {
	var n struct {
		Metadata Meta `json:"metadata"`
	}
	if err := c.get(ctx, "/api/v1/nodes/"+url.PathEscape(node), nil, &n); err != nil {
		return nil, fmt.Errorf("reading node %q: %w", node, err)
	}
	return n.Metadata.Labels, nil
}

// SecretData returns the data of a Secret. Its values are key material
// for some callers: they are never logged here.
func (c *Client) SecretData(ctx context.Context, namespace, name string) (map[string][]byte, error) {
	var s struct {
		Data map[string][]byte `json:"data"`
	}
	if err := c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/secrets/"+url.PathEscape(name), nil, &s); err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
	}
	return s.Data, nil
}

// ConfigMapData returns the data of a ConfigMap.
func (c *Client) ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error) {
	var m struct {
		Data map[string]string `json:"data"`
	}
	if err := c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/configmaps/"+url.PathEscape(name), nil, &m); err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s/%s: %w", namespace, name, err)
	}
	return m.Data, nil
}
