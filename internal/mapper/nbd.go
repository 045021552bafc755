package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/leanceph/cephcsi/internal/keyexec"
	"github.com/leanceph/cephcsi/internal/request"
	"github.com/leanceph/cephcsi/internal/topology"
)

// NBD maps with rbd-nbd: librbd in a user-space daemon serving /dev/nbdN.
// The key reaches rbd-nbd through an in-memory file (keyexec.Command.Key).
type NBD struct {
	Binary string // rbd-nbd
	// Conf is the ceph.conf given to rbd-nbd ("" for /etc/ceph/ceph.conf
	// when it exists, else none); the monitors always come from the Spec.
	Conf   string
	Runner keyexec.Runner
	Busy   BusyFunc
	// Timeout bounds one rbd-nbd command.
	Timeout time.Duration
}

// NewNBD returns the rbd-nbd mapper.
func NewNBD(r keyexec.Runner) *NBD {
	return &NBD{Binary: "rbd-nbd", Runner: r, Busy: DeviceBusy, Timeout: 90 * time.Second}
}

// nbdImageSpec is rbd-nbd's pool[/namespace]/image.
func nbdImageSpec(s Spec) string { return s.String() }

// flags turns "a,b=c" into "--a --b=c", the rbd-nbd spelling. rbd-nbd
// reads any Ceph option so given: request.SafeOption keeps the identity,
// the key and the monitors out, however spelled.
func nbdFlags(opts string) ([]string, error) {
	var out []string
	for _, o := range splitOptions(opts) {
		if err := request.SafeOption("rbd-nbd options", o); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
		out = append(out, "--"+o)
	}
	return out, nil
}

// Map implements Mapper.
func (n *NBD) Map(ctx context.Context, s Spec) (string, error) {
	if err := s.validate(true); err != nil {
		return "", err
	}
	if dev, err := n.Find(ctx, s); err != nil || dev != "" {
		return dev, err
	}
	flags, err := nbdFlags(s.Options)
	if err != nil {
		return "", err
	}
	args := []string{"-c", cephConf(n.Conf), "--id", s.UserID, "--keyfile", keyexec.KeyFilePath, "-m", strings.Join(s.Monitors, ",")}
	if s.ReadOnly {
		args = append(args, "--read-only")
	}
	args = append(args, flags...)
	if s.CrushLocation != nil {
		args = append(args, "--rbd_read_from_replica_policy=localize", "--crush_location="+topology.LibradosCrushLocation(s.CrushLocation))
	}
	args = append(args, "map", nbdImageSpec(s))
	res, err := n.Runner.Run(ctx, keyexec.Command{Path: n.Binary, Args: args, Key: s.Key, Timeout: n.Timeout, Daemon: true})
	if err != nil {
		return "", n.mapError(s, err)
	}
	dev := lastLine(res.Stdout)
	if !strings.HasPrefix(dev, "/dev/nbd") {
		return "", fmt.Errorf("rbd-nbd map of %s printed %q, not a device", s, dev)
	}
	return dev, nil
}

func (n *NBD) mapError(s Spec, err error) error {
	msg := err.Error()
	switch {
	case isTimeout(err):
		return fmt.Errorf("rbd-nbd map of %s: %w", s, err)
	case strings.Contains(msg, "No such file or directory") && strings.Contains(msg, "image"),
		strings.Contains(msg, "error opening image"):
		return fmt.Errorf("%w: rbd-nbd map of %s: %w", ErrImageNotFound, s, err)
	case strings.Contains(msg, "failed to find unused device"),
		strings.Contains(msg, "failed to load nbd kernel module"),
		strings.Contains(msg, "Module nbd not found"):
		return fmt.Errorf("%w: rbd-nbd map of %s: %w", ErrUnsupported, s, err)
	}
	return fmt.Errorf("rbd-nbd map of %s: %w", s, err)
}

// nbdMapping is one entry of `rbd-nbd list-mapped --format json`.
type nbdMapping struct {
	PID       int    `json:"id"`
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
}

// Find implements Mapper.
func (n *NBD) Find(ctx context.Context, s Spec) (string, error) {
	res, err := n.Runner.Run(ctx, keyexec.Command{Path: n.Binary, Args: []string{"list-mapped", "--format", "json"}, Timeout: n.Timeout})
	if err != nil {
		return "", fmt.Errorf("listing rbd-nbd mappings: %w", err)
	}
	out := strings.TrimSpace(res.Stdout)
	if out == "" {
		return "", nil
	}
	var list []nbdMapping
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return "", fmt.Errorf("parsing rbd-nbd list-mapped: %w", err)
	}
	for _, m := range list {
		if m.Pool == s.Pool && m.Namespace == s.Namespace && m.Image == s.Image && (m.Snap == "" || m.Snap == "-") {
			return m.Device, nil
		}
	}
	return "", nil
}

// Unmap implements Mapper. unmapOptions become rbd-nbd flags.
func (n *NBD) Unmap(ctx context.Context, s Spec, opts string) error {
	flags, err := nbdFlags(opts)
	if err != nil {
		return err
	}
	dev, err := n.Find(ctx, s)
	if err != nil || dev == "" {
		return err
	}
	// rbd-nbd disconnects even a mounted device; refuse that here.
	busy, err := n.Busy(dev)
	if err != nil {
		return err
	}
	if busy {
		return fmt.Errorf("%w: %s (%s) is mounted or held open", ErrBusy, dev, s)
	}
	args := append(append([]string{}, flags...), "unmap", dev)
	if _, err := n.Runner.Run(ctx, keyexec.Command{Path: n.Binary, Args: args, Timeout: n.Timeout}); err != nil {
		if strings.Contains(err.Error(), "Device or resource busy") {
			return fmt.Errorf("%w: %s: %w", ErrBusy, dev, err)
		}
		return fmt.Errorf("rbd-nbd unmap of %s (%s): %w", dev, s, err)
	}
	return nil
}

// Refresh implements Mapper: rbd-nbd resizes the device itself when the
// image grows.
func (n *NBD) Refresh(context.Context, Spec, string) error { return nil }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
