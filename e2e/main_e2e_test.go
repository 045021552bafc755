//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// theEnv is the control plane shared by the tests of this package.
var theEnv *env

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root := filepath.Dir(wd)
	tools, err := loadTools(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: tools:", err)
		return 1
	}
	// Scratch (certificates, etcd data, tokens) goes away at the end; the
	// logs stay in _output/e2e-logs for a look after a failure. They must
	// not hold a Ceph key, which the tests check.
	dir, err := os.MkdirTemp("", "cephcsi-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	logDir := filepath.Join(root, "_output", "e2e-logs")
	if err := os.RemoveAll(logDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	e := &env{root: root, dir: dir, logDir: logDir, tools: tools, snapshotCRD: tools["snapshot-crds"]}
	defer e.stopAll()
	if err := e.startControlPlane(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: control plane:", err)
		return 1
	}
	// The worker node: containerd and a kubelet joined as e2eNode.
	n, err := newNode(e)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: node:", err)
		return 1
	}
	defer func() {
		if left := n.teardown(); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "e2e: node teardown had to remove:", strings.Join(left, "; "))
		}
	}()
	if err := n.start(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: node:", err)
		return 1
	}
	e.node = n
	theEnv = e
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, "e2e: logs of every process are in", logDir)
	}
	return code
}
