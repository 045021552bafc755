// Package kube reaches the Kubernetes API for the little the driver reads
// from it: a node's labels (topology, read affinity), and the Secrets and
// ConfigMaps that KMS configurations name (encrypted volumes). It uses the pod's
// service account, or a kubeconfig file when one is named (--kubeconfig,
// or the KUBERNETES_CONFIG_PATH environment variable ceph-csi reads).
package kube

import (
	"context"
	"fmt"
	"os"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ConfigPathEnv names a kubeconfig file when --kubeconfig is not given.
const ConfigPathEnv = "KUBERNETES_CONFIG_PATH"

// Client reads from the Kubernetes API; it connects on first use.
type Client struct {
	// Kubeconfig is a kubeconfig file; "" for $KUBERNETES_CONFIG_PATH or,
	// without it, the in-cluster service account.
	Kubeconfig string

	once sync.Once
	cs   kubernetes.Interface
	err  error
}

func (c *Client) clientset() (kubernetes.Interface, error) {
	c.once.Do(func() {
		var cfg *rest.Config
		path := c.Kubeconfig
		if path == "" {
			path = os.Getenv(ConfigPathEnv)
		}
		if path != "" {
			cfg, c.err = clientcmd.BuildConfigFromFlags("", path)
		} else {
			cfg, c.err = rest.InClusterConfig()
		}
		if c.err != nil {
			c.err = fmt.Errorf("configuring the Kubernetes client: %w", c.err)
			return
		}
		c.cs, c.err = kubernetes.NewForConfig(cfg)
	})
	return c.cs, c.err
}

// NodeLabels returns the labels of the named node.
func (c *Client) NodeLabels(ctx context.Context, node string) (map[string]string, error) {
	cs, err := c.clientset()
	if err != nil {
		return nil, err
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading node %q: %w", node, err)
	}
	return n.GetLabels(), nil
}

// SecretData returns the data of a Secret. Its values are key material
// for some callers: they are never logged here.
func (c *Client) SecretData(ctx context.Context, namespace, name string) (map[string][]byte, error) {
	cs, err := c.clientset()
	if err != nil {
		return nil, err
	}
	s, err := cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
	}
	return s.Data, nil
}

// ConfigMapData returns the data of a ConfigMap.
func (c *Client) ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error) {
	cs, err := c.clientset()
	if err != nil {
		return nil, err
	}
	m, err := cs.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s/%s: %w", namespace, name, err)
	}
	return m.Data, nil
}
