// Package demo walks through the driver's CSI calls over its unix socket
// and shows, after each call, what it did on the Ceph cluster (read with
// go-ceph as client.admin). cmd/csi-demo runs it; scripts/demo.sh starts the
// cluster and the driver around it.
//
// A walk-through is a list of Steps sharing one *Demo. Later walk-throughs
// (node staging and mounts, CephFS) add their own Step lists and, when they
// need another driver, another endpoint in Config.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config says where the driver and the cluster are.
type Config struct {
	// RBDEndpoint is the RBD driver's socket, unix:///path/csi.sock.
	RBDEndpoint string
	// ClusterDir and ClusterScript locate the local cluster; the script's
	// `env` command gives the config file, the admin keyring and the
	// provisioner credentials.
	ClusterDir    string
	ClusterScript string
	// Pool is the RBD pool the volumes go to.
	Pool string
	// DriverLog, when set, is checked at the end for cephx keys.
	DriverLog string
	// CallTimeout bounds each CSI call.
	CallTimeout time.Duration
	Out         io.Writer
}

// Step is one stage of a walk-through.
type Step struct {
	Title string
	Run   func(ctx context.Context, d *Demo) error
}

// Driver is a CSI driver reached over its socket.
type Driver struct {
	Conn       *grpc.ClientConn
	Identity   csi.IdentityClient
	Controller csi.ControllerClient
	Node       csi.NodeClient
}

// Demo is the state the steps share.
type Demo struct {
	cfg   Config
	out   io.Writer
	vars  map[string]string // from `ceph-cluster.sh env`; holds keys, never printed
	RBD   *Driver
	Admin *rados.Conn
	pool  *rados.IOContext
	// RunID is part of every name the demo gives, so that the final check
	// looks only at what this run made.
	RunID string

	mu      sync.Mutex
	undo    []undoItem // what to delete if a step fails, in creation order
	uuids   []string   // driver UUIDs seen, for the leftovers check
	stepNum int
	steps   int
}

type undoItem struct {
	what string
	fn   func(ctx context.Context) error
	done bool
}

// Run connects to the driver and the cluster and runs steps in order. When
// a step fails it deletes what the walk-through created so far, so a
// failed demo leaves nothing behind either.
func Run(ctx context.Context, cfg Config, steps []Step) (err error) {
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = time.Minute
	}
	if cfg.Pool == "" {
		cfg.Pool = "rbd"
	}
	d := &Demo{cfg: cfg, RunID: uuid.NewString()[:8], steps: len(steps)}
	if d.vars, err = clusterVars(cfg.ClusterScript, cfg.ClusterDir); err != nil {
		return err
	}
	// Keys must never be printed: scrub them from everything the demo
	// writes, including error messages from the driver.
	red := &redactor{w: cfg.Out, secrets: d.secretValues()}
	d.out = red
	defer func() {
		if err != nil {
			err = errors.New(red.scrub(err.Error()))
		}
	}()
	if err := d.connectAdmin(); err != nil {
		return err
	}
	defer func() {
		if d.pool != nil {
			d.pool.Destroy()
		}
		d.Admin.Shutdown()
	}()
	if d.RBD, err = dial(cfg.RBDEndpoint); err != nil {
		return err
	}
	defer func() { _ = d.RBD.Conn.Close() }() // the demo's result is already decided
	d.Printf("demo run %s: driver at %s, cluster %s (admin view via %s)\n",
		d.RunID, cfg.RBDEndpoint, d.vars["CEPH_CLUSTER_ID"], d.vars["CEPH_ADMIN_KEYRING"])

	start := time.Now()
	for i, s := range steps {
		d.stepNum = i + 1
		d.Printf("\n== %d/%d %s\n", i+1, len(steps), s.Title)
		t0 := time.Now()
		if err := s.Run(ctx, d); err != nil {
			d.Printf("!! step failed: %v\n", err)
			d.rollback()
			return fmt.Errorf("step %q: %w", s.Title, err)
		}
		d.Printf("   (%s)\n", time.Since(t0).Round(time.Millisecond))
	}
	d.Printf("\ndemo finished in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// Pool returns the admin view of the RBD pool, opened once per run.
func (d *Demo) Pool() (*rados.IOContext, error) {
	if d.pool == nil {
		io, err := d.Admin.OpenIOContext(d.cfg.Pool)
		if err != nil {
			return nil, fmt.Errorf("opening pool %s as admin: %w", d.cfg.Pool, err)
		}
		d.pool = io
	}
	return d.pool, nil
}

// Printf writes to the demo's output with keys redacted.
func (d *Demo) Printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

// Show prints a labelled line of cluster state, indented under its step.
func (d *Demo) Show(label, format string, args ...any) {
	d.Printf("   %-22s %s\n", label, fmt.Sprintf(format, args...))
}

// Call prints a CSI call as it is made.
func (d *Demo) Call(format string, args ...any) { d.Printf("-> %s\n", fmt.Sprintf(format, args...)) }

// Ctx returns a context bounded by the call timeout.
func (d *Demo) Ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.cfg.CallTimeout)
}

// Name returns a request name unique to this run.
func (d *Demo) Name(kind string) string { return fmt.Sprintf("demo-%s-%s", kind, d.RunID) }

// Var returns a cluster variable that is not a secret.
func (d *Demo) Var(name string) string {
	if strings.HasSuffix(name, "_KEY") {
		return ""
	}
	return d.vars[name]
}

// RBDSecrets are the provisioner credentials, as the sidecars pass them.
func (d *Demo) RBDSecrets() map[string]string {
	return map[string]string{"userID": d.vars["CEPH_RBD_PROVISIONER_ID"], "userKey": d.vars["CEPH_RBD_PROVISIONER_KEY"]}
}

// OnFailure registers how to delete something just created; Done marks it
// deleted by the walk-through itself.
func (d *Demo) OnFailure(what string, fn func(ctx context.Context) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range d.undo {
		if u.what == what && !u.done {
			return // a repeated create of the same thing
		}
	}
	d.undo = append(d.undo, undoItem{what: what, fn: fn})
}

// Done marks an OnFailure item as deleted.
func (d *Demo) Done(what string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.undo {
		if d.undo[i].what == what {
			d.undo[i].done = true
		}
	}
}

// Track remembers a driver UUID for the leftovers check.
func (d *Demo) Track(u string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.uuids = append(d.uuids, u)
}

// Ours reports whether a name belongs to this run.
func (d *Demo) Ours(s string) bool {
	if strings.Contains(s, d.RunID) {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range d.uuids {
		if strings.Contains(s, u) {
			return true
		}
	}
	return false
}

func (d *Demo) rollback() {
	d.mu.Lock()
	items := append([]undoItem(nil), d.undo...)
	d.mu.Unlock()
	for i := len(items) - 1; i >= 0; i-- {
		if items[i].done {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.CallTimeout)
		err := items[i].fn(ctx)
		cancel()
		if err != nil {
			d.Printf("!! cleanup of %s failed: %v\n", items[i].what, err)
		} else {
			d.Printf("   cleaned up %s\n", items[i].what)
		}
	}
}

func (d *Demo) secretValues() []string {
	var s []string
	for k, v := range d.vars {
		if strings.HasSuffix(k, "_KEY") && v != "" {
			s = append(s, v)
		}
	}
	return s
}

// CheckDriverLog reports whether a cephx key reached the driver's log.
func (d *Demo) CheckDriverLog() error {
	if d.cfg.DriverLog == "" {
		d.Show("driver log", "not given; skipped")
		return nil
	}
	data, err := os.ReadFile(d.cfg.DriverLog)
	if err != nil {
		return err
	}
	for k, v := range d.vars {
		if strings.HasSuffix(k, "_KEY") && v != "" && bytes.Contains(data, []byte(v)) {
			return fmt.Errorf("the driver log %s contains the value of %s", d.cfg.DriverLog, k)
		}
	}
	d.Show("driver log", "%d lines, no cephx key in it", bytes.Count(data, []byte("\n")))
	return nil
}

func dial(endpoint string) (*Driver, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok {
		return nil, fmt.Errorf("endpoint %q: want unix:///path", endpoint)
	}
	conn, err := grpc.NewClient("unix:"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Driver{Conn: conn, Identity: csi.NewIdentityClient(conn),
		Controller: csi.NewControllerClient(conn), Node: csi.NewNodeClient(conn)}, nil
}

// clusterVars runs `<script> env <dir>` and parses its KEY=value lines.
func clusterVars(script, dir string) (map[string]string, error) {
	if script == "" || dir == "" {
		return nil, errors.New("the cluster script and directory are required")
	}
	out, err := exec.Command(script, "env", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("%s env %s: %w", script, dir, err)
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	for _, k := range []string{"CEPH_CONF_FILE", "CEPH_ADMIN_KEYRING", "CEPH_CLUSTER_ID", "CEPH_RBD_PROVISIONER_ID", "CEPH_RBD_PROVISIONER_KEY"} {
		if vars[k] == "" {
			return nil, fmt.Errorf("%s env %s: %s is missing", script, dir, k)
		}
	}
	return vars, nil
}

func (d *Demo) connectAdmin() error {
	conn, err := rados.NewConnWithUser("admin")
	if err != nil {
		return err
	}
	if err := conn.ReadConfigFile(d.vars["CEPH_CONF_FILE"]); err != nil {
		conn.Shutdown()
		return fmt.Errorf("reading %s: %w", d.vars["CEPH_CONF_FILE"], err)
	}
	// No admin socket: the cluster's ceph.conf names one per client name,
	// which another admin client may already hold.
	for _, o := range [][2]string{{"keyring", d.vars["CEPH_ADMIN_KEYRING"]}, {"admin_socket", ""}} {
		if err := conn.SetConfigOption(o[0], o[1]); err != nil {
			conn.Shutdown()
			return fmt.Errorf("setting %s: %w", o[0], err)
		}
	}
	if err := conn.Connect(); err != nil {
		conn.Shutdown()
		return fmt.Errorf("connecting as client.admin: %w", err)
	}
	d.Admin = conn
	return nil
}

// redactor replaces secret values in everything written through it.
type redactor struct {
	w       io.Writer
	secrets []string
}

func (r *redactor) scrub(s string) string {
	for _, k := range r.secrets {
		s = strings.ReplaceAll(s, k, "<redacted>")
	}
	return s
}

func (r *redactor) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, r.scrub(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
