// Package fence keeps client networks off a Ceph cluster with OSD blocklist
// entries, set through the monitors' command interface (what `ceph osd
// blocklist range add` sends), and finds the address a client is seen from.
//
// A fence is one range entry per CIDR. A cluster without range entries
// (Ceph releases before the range blocklist) gets one entry per address
// instead; that cluster is recognised from the command descriptions the
// monitors publish, because such a monitor would take a CIDR for a client
// address with a nonce and blocklist the wrong thing.
package fence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/ceph/go-ceph/common/admin/osd"
	"github.com/ceph/go-ceph/common/commands"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// Expiry is how long a fence lasts, in seconds: Ceph has no blocklist entry
// without an end, so a fence is set for five years, as ceph-csi sets its
// own, and lasts until it is removed.
const Expiry = 157784760

// MaxAddresses bounds the entries one CIDR may take on a cluster without
// range entries: a /24 (IPv4) or /120 (IPv6).
const MaxAddresses = 256

// Commander is what fencing needs of a cluster connection (*rados.Conn has
// it).
type Commander = commands.RadosCommander

// CIDR is one network to fence, as the caller spelled it. Ceph keeps a
// range entry in the spelling it was given (10.0.0.5/24 and 10.0.0.0/24 are
// two entries), so a fence is removed with the spelling it was set with.
type CIDR struct {
	Text   string
	Prefix netip.Prefix
}

// ParseCIDRs checks the CIDR blocks of a request: at least one, each an
// IPv4 or IPv6 prefix; a block named twice counts once.
func ParseCIDRs(field string, blocks []string) ([]CIDR, error) {
	if len(blocks) == 0 {
		return nil, csierr.Field(field, "is required: name at least one CIDR block")
	}
	var out []CIDR
	for i, b := range blocks {
		p, err := netip.ParsePrefix(b)
		if err != nil {
			return nil, csierr.Field(fmt.Sprintf("%s[%d]", field, i), "%q is not a CIDR block (such as 10.0.0.0/24 or 10.0.0.5/32)", b)
		}
		if slices.ContainsFunc(out, func(c CIDR) bool { return c.Text == b }) {
			continue
		}
		out = append(out, CIDR{Text: b, Prefix: p})
	}
	return out, nil
}

// Fencer sets and removes fences on one cluster.
type Fencer struct {
	conn  Commander
	admin *osd.Admin
}

// New returns a Fencer working through conn.
func New(conn Commander) *Fencer {
	return &Fencer{conn: conn, admin: osd.NewFromConn(conn)}
}

// commandSig is one command of the monitors' get_command_descriptions.
type commandSig struct {
	Sig []json.RawMessage `json:"sig"`
}

// RangeSupported reports whether the monitors take range blocklist entries:
// whether the "osd blocklist" command they describe has a "range" argument.
func (f *Fencer) RangeSupported() (bool, error) {
	out, status, err := f.conn.MonCommand([]byte(`{"prefix": "get_command_descriptions"}`))
	if err != nil {
		return false, fmt.Errorf("reading the monitors' command descriptions: %w (%s)", err, status)
	}
	var cmds map[string]commandSig
	if err := json.Unmarshal(out, &cmds); err != nil {
		return false, fmt.Errorf("decoding the monitors' command descriptions: %w", err)
	}
	for _, c := range cmds {
		var words []string
		hasRange := false
		for _, part := range c.Sig {
			var word string
			if json.Unmarshal(part, &word) == nil {
				words = append(words, word)
				continue
			}
			var arg struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(part, &arg) == nil && arg.Name == "range" {
				hasRange = true
			}
		}
		if hasRange && slices.Equal(words, []string{"osd", "blocklist"}) {
			return true, nil
		}
	}
	return false, nil
}

// addresses lists every address of c, for a cluster without range entries.
func addresses(c CIDR) ([]netip.Addr, error) {
	bits := c.Prefix.Addr().BitLen() - c.Prefix.Bits()
	if bits > 8 {
		return nil, csierr.Errorf(csierr.ErrPrecondition,
			"this Ceph cluster has no range blocklist entries, so %s would take %s entries, one per address; "+
				"fence at most %d addresses per CIDR block (a /%d)", c.Text, count(bits), MaxAddresses, c.Prefix.Addr().BitLen()-8)
	}
	var out []netip.Addr
	p := c.Prefix.Masked()
	for a := p.Addr(); p.Contains(a); a = a.Next() {
		out = append(out, a)
		if !a.Next().IsValid() {
			break
		}
	}
	return out, nil
}

func count(bits int) string {
	if bits >= 63 {
		return "2^" + strconv.Itoa(bits)
	}
	return strconv.FormatUint(1<<bits, 10)
}

// Fence blocklists every CIDR block. Blocklisting what is already
// blocklisted renews the entry.
func (f *Fencer) Fence(cidrs []CIDR) error {
	return f.each(cidrs, func(addr string) error {
		if err := f.admin.OSDBlocklistAdd(osd.AddressEntry{Addr: addr, Expire: Expiry}); err != nil {
			return fmt.Errorf("blocklisting %s: %w", addr, err)
		}
		return nil
	})
}

// Unfence removes the entries Fence set for the CIDR blocks; a block that
// is not fenced is no error.
func (f *Fencer) Unfence(cidrs []CIDR) error {
	return f.each(cidrs, func(addr string) error {
		if err := f.admin.OSDBlocklistRemove(osd.AddressEntry{Addr: addr}); err != nil {
			return fmt.Errorf("removing the blocklist entry of %s: %w", addr, err)
		}
		return nil
	})
}

// each runs op on the range of every block, or on every address of every
// block when the cluster has no range entries. All blocks are checked
// before the first entry changes.
func (f *Fencer) each(cidrs []CIDR, op func(addr string) error) error {
	ranges, err := f.RangeSupported()
	if err != nil {
		return err
	}
	if ranges {
		for _, c := range cidrs {
			if err := op(c.Text); err != nil {
				return err
			}
		}
		return nil
	}
	var all []netip.Addr
	for _, c := range cidrs {
		addrs, err := addresses(c)
		if err != nil {
			return err
		}
		all = append(all, addrs...)
	}
	for _, a := range all {
		if err := op(a.String()); err != nil {
			return err
		}
	}
	return nil
}

// List returns the fences on the cluster: every range entry, and every
// entry of a whole address (no port, no nonce: what Fence sets on a
// cluster without ranges) as a one-address block. Entries of single client
// instances (an address with a nonce, as RBD's lock breaking sets) are not
// fences and are left out.
func (f *Fencer) List() ([]string, error) {
	// go-ceph's OSDBlocklist merges the address and range lists, and a range
	// ("10.0.0.0:0/24") reads like a client instance with nonce 24, so the
	// two lists are read here.
	out, status, err := f.conn.MonCommand([]byte(`{"prefix": "osd blocklist ls", "format": "json"}`))
	if err != nil {
		return nil, fmt.Errorf("listing the OSD blocklist: %w (%s)", err, status)
	}
	return parseBlocklist(out)
}

// parseBlocklist reads `osd blocklist ls` in JSON: a list of address
// entries, then (on releases with ranges) a list of range entries.
func parseBlocklist(body []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var addrs []struct {
		Addr string `json:"addr"`
	}
	var ranges []struct {
		Range string `json:"range"`
	}
	if err := dec.Decode(&addrs); err != nil {
		return nil, fmt.Errorf("decoding the OSD blocklist: %w", err)
	}
	if dec.More() {
		if err := dec.Decode(&ranges); err != nil {
			return nil, fmt.Errorf("decoding the OSD blocklist's ranges: %w", err)
		}
	}
	out := []string{}
	add := func(c string, ok bool) {
		if ok && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	for _, r := range ranges {
		add(entryCIDR(r.Range, true))
	}
	for _, a := range addrs {
		add(entryCIDR(a.Addr, false))
	}
	return out, nil
}

// entryCIDR reads an entry as Ceph lists it: "10.0.0.5:0/24" for a range
// (in the spelling it was given), "10.0.0.7:0/0" for a whole address,
// "[fd00::1]:0/0" for IPv6, "10.0.0.8:0/1234" for one client instance.
func entryCIDR(entry string, isRange bool) (string, bool) {
	hostPort, suffix, ok := strings.Cut(strings.TrimPrefix(entry, "cidr:"), "/")
	if !ok {
		return "", false
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil || port != "0" {
		return "", false
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return "", false
	}
	n, err := strconv.Atoi(suffix)
	if err != nil {
		return "", false
	}
	switch {
	case isRange && n >= 0 && n <= addr.BitLen():
		return addr.String() + "/" + suffix, true
	case !isRange && n == 0:
		return netip.PrefixFrom(addr, addr.BitLen()).String(), true
	}
	return "", false
}

// ErrNoAddress is returned when the client's own address cannot be read.
var ErrNoAddress = errors.New("the Ceph client reports no address")

// Addrs is what ClientAddress needs of a connection (*rados.Conn has it).
type Addrs interface {
	GetAddrs() (string, error)
}

// ClientAddress returns the address the cluster sees this client connect
// from (librados' own view, e.g. "10.0.0.9:0/2686266785" or a v2 vector),
// as a one-address CIDR block.
func ClientAddress(c Addrs) (netip.Prefix, error) {
	s, err := c.GetAddrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("reading the client address: %w", err)
	}
	return parseClientAddrs(s)
}

// parseClientAddrs reads librados' address: a plain entity address
// ("10.0.0.9:0/123") or an address vector ("[v2:10.0.0.9:0/123,v1:...]").
func parseClientAddrs(s string) (netip.Prefix, error) {
	s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "["), "]")
	for _, part := range strings.Split(s, ",") {
		for _, proto := range []string{"v2:", "v1:", "any:"} {
			part = strings.TrimPrefix(part, proto)
		}
		hostPort, _, _ := strings.Cut(part, "/")
		host, _, err := net.SplitHostPort(hostPort)
		if err != nil {
			continue
		}
		if addr, err := netip.ParseAddr(host); err == nil && !addr.IsUnspecified() {
			return netip.PrefixFrom(addr, addr.BitLen()), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: %q", ErrNoAddress, s)
}
