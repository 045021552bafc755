// Package kubetest serves a stand-in Kubernetes API for unit tests of the
// code that reads it through internal/kube.
package kubetest

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"testing"

	"k8s.io/client-go/rest"
)

// Token is the bearer token the stand-in accepts.
const Token = "sa-token"

// APIServer serves canned JSON by escaped path and query ("/api/v1/pods?limit=500")
// over TLS, as a real API server does: a request without Token is a 401,
// a path it lacks a 404 Status (as for CRDs that are not installed). It
// returns the client configuration that reaches it.
func APIServer(t *testing.T, pages map[string]string) *rest.Config {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+Token {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"Unauthorized"}`))
			return
		}
		key := r.URL.EscapedPath()
		if r.URL.RawQuery != "" {
			key += "?" + r.URL.RawQuery
		}
		body, ok := pages[key]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"the server could not find the requested resource"}`))
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return &rest.Config{Host: srv.URL, BearerToken: Token, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
}
