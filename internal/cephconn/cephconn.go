// Package cephconn keeps a cache of librados connections shared by all
// requests that use the same monitors and credentials.
//
// Credentials are handed to librados as configuration values in memory; no
// keyring file is ever written.
package cephconn

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/metrics"
)

// ErrMissingCredentials is returned when a request carries no usable secret.
var ErrMissingCredentials = errors.New("missing credentials")

// Credentials are a cephx user and its key, as found in the CSI secrets.
type Credentials struct {
	ID  string // without the "client." prefix
	Key string
}

// String never shows the key.
func (c Credentials) String() string { return "client." + c.ID }

// FromSecrets picks the credentials out of a CSI secrets map: the first
// (idKey, keyKey) pair present wins, so CephFS can prefer adminID/adminKey and
// fall back to userID/userKey.
func FromSecrets(secrets map[string]string, pairs ...[2]string) (Credentials, error) {
	for _, p := range pairs {
		id, key := secrets[p[0]], secrets[p[1]]
		if id != "" && key != "" {
			return Credentials{ID: strings.TrimPrefix(id, "client."), Key: key}, nil
		}
	}
	var names []string
	for _, p := range pairs {
		names = append(names, p[0]+"/"+p[1])
	}
	return Credentials{}, fmt.Errorf("%w: secrets must contain %s", ErrMissingCredentials, strings.Join(names, " or "))
}

type cacheKey struct {
	monitors string
	id       string
	keyHash  [sha256.Size]byte
}

type entry struct {
	conn     *rados.Conn
	refs     int
	lastUsed time.Time
}

// Pool caches connections and closes the ones left idle.
type Pool struct {
	idle    time.Duration
	timeout time.Duration

	mu      sync.Mutex
	entries map[cacheKey]*entry
	stop    chan struct{}
	once    sync.Once
}

// NewPool returns a cache that closes connections idle for longer than idle.
// Connecting to the cluster gives up after timeout.
func NewPool(idle, timeout time.Duration) *Pool {
	p := &Pool{idle: idle, timeout: timeout, entries: map[cacheKey]*entry{}, stop: make(chan struct{})}
	go p.reap()
	return p
}

// Conn is a connection on loan from the pool; call Release when done.
type Conn struct {
	*rados.Conn
	pool *Pool
	key  cacheKey
}

// Release gives the connection back.
func (c *Conn) Release() {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	if e, ok := c.pool.entries[c.key]; ok && e.conn == c.Conn {
		e.refs--
		e.lastUsed = time.Now()
	}
}

// Get returns a connected client for monitors and creds.
func (p *Pool) Get(monitors []string, creds Credentials) (*Conn, error) {
	if creds.ID == "" || creds.Key == "" {
		return nil, csierr.Errorf(csierr.ErrInvalid, "%w", ErrMissingCredentials)
	}
	key := cacheKey{monitors: strings.Join(monitors, ","), id: creds.ID, keyHash: sha256.Sum256([]byte(creds.Key))}
	p.mu.Lock()
	if e, ok := p.entries[key]; ok {
		e.refs++
		e.lastUsed = time.Now()
		p.mu.Unlock()
		return &Conn{Conn: e.conn, pool: p, key: key}, nil
	}
	p.mu.Unlock()

	// Connect outside the lock: it takes a network round trip.
	began := time.Now()
	conn, err := connect(key.monitors, creds, p.timeout)
	if metrics.Connect(began, err); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.entries[key]; ok { // another request won the race
		conn.Shutdown()
		e.refs++
		e.lastUsed = time.Now()
		return &Conn{Conn: e.conn, pool: p, key: key}, nil
	}
	p.entries[key] = &entry{conn: conn, refs: 1, lastUsed: time.Now()}
	return &Conn{Conn: conn, pool: p, key: key}, nil
}

// ErrConnect wraps failures to reach or authenticate with the cluster.
var ErrConnect = errors.New("cannot connect to the Ceph cluster")

// connectError classifies a failed connect: a key the monitors refuse is
// ErrPermission and a key librados cannot parse ErrInvalid (configuration
// errors the user must see at once, not retry), anything else
// ErrUnavailable.
func connectError(creds Credentials, monitors string, err error) error {
	kind := csierr.ErrUnavailable
	switch {
	case csierr.IsErrno(err, syscall.EACCES), csierr.IsErrno(err, syscall.EPERM):
		kind = csierr.ErrPermission
	case csierr.IsErrno(err, syscall.EINVAL):
		kind = csierr.ErrInvalid
	}
	return csierr.Errorf(kind, "%w as %s via %s: %v", ErrConnect, creds, monitors, err)
}

func connect(monitors string, creds Credentials, timeout time.Duration) (*rados.Conn, error) {
	conn, err := rados.NewConnWithUser(creds.ID)
	if err != nil {
		return nil, csierr.Errorf(csierr.ErrInvalid, "%w: %v", ErrConnect, err)
	}
	secs := fmt.Sprintf("%d", int(timeout.Seconds()))
	opts := [][2]string{
		{"mon_host", monitors},
		{"key", creds.Key},
		// Keep librados from looking for keyring files on disk.
		{"keyring", "/dev/null"},
		{"client_mount_timeout", secs},
		{"rados_mon_op_timeout", secs},
		{"rados_osd_op_timeout", secs},
		{"log_to_stderr", "false"},
		{"err_to_stderr", "false"},
	}
	for _, o := range opts {
		if err := conn.SetConfigOption(o[0], o[1]); err != nil {
			conn.Shutdown()
			// Never echo o[1]: it may be the key.
			return nil, csierr.Errorf(csierr.ErrInvalid, "%w: setting %s: %v", ErrConnect, o[0], err)
		}
	}
	if err := conn.Connect(); err != nil {
		conn.Shutdown()
		return nil, connectError(creds, monitors, err)
	}
	return conn, nil
}

func (p *Pool) reap() {
	interval := p.idle / 2
	if interval <= 0 || interval > time.Minute {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.closeIdle(now)
		}
	}
}

func (p *Pool) closeIdle(now time.Time) {
	p.mu.Lock()
	var idle []*rados.Conn
	for k, e := range p.entries {
		if e.refs <= 0 && now.Sub(e.lastUsed) > p.idle {
			idle = append(idle, e.conn)
			delete(p.entries, k)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		c.Shutdown()
	}
}

// Len returns the number of cached connections.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.entries)
}

// Close shuts every connection down.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.stop) })
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.entries {
		e.conn.Shutdown()
		delete(p.entries, k)
	}
}
