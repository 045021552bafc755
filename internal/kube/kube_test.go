package kube

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leanceph/cephcsi/internal/kube/kubetest"
)

func apiServer(t *testing.T, pages map[string]string) *Client {
	t.Helper()
	return &Client{Config: kubetest.APIServer(t, pages)}
}

func TestReadsObjects(t *testing.T) {
	c := apiServer(t, map[string]string{
		"/api/v1/nodes/node%201":                   `{"metadata":{"name":"node 1","labels":{"topology.kubernetes.io/zone":"z1"}}}`,
		"/api/v1/namespaces/kms/secrets/vault":     `{"data":{"token":"c2VjcmV0"}}`,
		"/api/v1/namespaces/kms/configmaps/config": `{"data":{"k":"v"}}`,
	})
	ctx := context.Background()
	labels, err := c.NodeLabels(ctx, "node 1")
	if err != nil || labels["topology.kubernetes.io/zone"] != "z1" {
		t.Errorf("NodeLabels = %v, %v", labels, err)
	}
	data, err := c.SecretData(ctx, "kms", "vault")
	if err != nil || string(data["token"]) != "secret" {
		t.Errorf("SecretData = %q, %v; want the base64 of the API decoded", data, err)
	}
	cm, err := c.ConfigMapData(ctx, "kms", "config")
	if err != nil || cm["k"] != "v" {
		t.Errorf("ConfigMapData = %v, %v", cm, err)
	}
	_, err = c.SecretData(ctx, "kms", "missing")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "kms/missing") || !strings.Contains(err.Error(), "could not find") {
		t.Errorf("missing Secret: %v, want ErrNotFound naming it and the server's message", err)
	}
}

func TestRefusedAndUnconfigured(t *testing.T) {
	c := apiServer(t, map[string]string{})
	c.Config.BearerToken = "wrong"
	_, err := c.NodeLabels(context.Background(), "n")
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "Unauthorized") || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v, want the server's 401", err)
	}
	bad := &Client{Kubeconfig: filepath.Join(t.TempDir(), "missing")}
	if _, err := bad.NodeLabels(context.Background(), "n"); !errors.Is(err, ErrConfig) {
		t.Errorf("missing kubeconfig: %v, want ErrConfig", err)
	}
}

func TestListFollowsContinue(t *testing.T) {
	c := apiServer(t, map[string]string{
		"/api/v1/persistentvolumeclaims?limit=500":                   `{"metadata":{"continue":"next one"},"items":[{"metadata":{"uid":"a"}},{"metadata":{"uid":"b"}}]}`,
		"/api/v1/persistentvolumeclaims?continue=next+one&limit=500": `{"metadata":{},"items":[{"metadata":{"uid":"c"}}]}`,
	})
	var uids []string
	err := List(context.Background(), c, "/api/v1/persistentvolumeclaims", func(o *struct {
		Metadata Meta `json:"metadata"`
	}) {
		uids = append(uids, o.Metadata.UID)
	})
	if err != nil || strings.Join(uids, ",") != "a,b,c" {
		t.Errorf("List = %v, %v; want a,b,c over two pages", uids, err)
	}
}
