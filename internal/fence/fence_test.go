package fence

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

// fakeMons answers the monitor commands fencing sends, keeping the
// blocklist as Ceph does: range entries as given, address entries as
// "ip:0/0". ranges says whether its "osd blocklist" takes a range
// argument (Ceph releases before range entries do not).
type fakeMons struct {
	ranges  bool
	addrs   []string
	rangesL []string
	sent    []map[string]any
	failOn  string
}

func (m *fakeMons) MgrCommand([][]byte) ([]byte, string, error) {
	return nil, "", fmt.Errorf("no manager command expected")
}

func (m *fakeMons) MonCommand(buf []byte) ([]byte, string, error) {
	var cmd map[string]any
	if err := json.Unmarshal(buf, &cmd); err != nil {
		return nil, "", err
	}
	m.sent = append(m.sent, cmd)
	switch cmd["prefix"] {
	case "get_command_descriptions":
		args := `{"name":"blocklistop","type":"CephChoices","strings":"add|rm"},{"name":"addr","type":"CephEntityAddr"}`
		if m.ranges {
			args = `{"name":"range","type":"CephString","goodchars":"[range]","req":false},` + args
		}
		return []byte(`{"cmd001":{"sig":["osd","blocklist","ls"]},"cmd002":{"sig":["osd","blocklist",` + args + `]},` +
			`"cmd003":{"sig":["osd","pool","ls"]}}`), "", nil
	case "osd blocklist ls":
		a, _ := json.Marshal(entries("addr", m.addrs))
		if !m.ranges {
			return a, "", nil
		}
		r, _ := json.Marshal(entries("range", m.rangesL))
		return append(a, r...), "", nil
	case "osd blocklist":
		addr, _ := cmd["addr"].(string)
		if m.failOn != "" && addr == m.failOn {
			return nil, "", syscall.EACCES
		}
		_, isRange := cmd["range"]
		if isRange && !m.ranges {
			// What an old monitor would do: take the CIDR for an address
			// with a nonce. Fencing must never send this.
			return nil, "", fmt.Errorf("range sent to a monitor without ranges: %v", cmd)
		}
		list := &m.addrs
		entry := addr
		switch {
		case isRange:
			list = &m.rangesL
		case strings.Contains(addr, ":"):
			entry = "[" + addr + "]:0/0"
		default:
			entry += ":0/0"
		}
		switch cmd["blocklistop"] {
		case "add":
			if !slices.Contains(*list, entry) {
				*list = append(*list, entry)
			}
		case "rm":
			*list = slices.DeleteFunc(*list, func(s string) bool { return s == entry })
		}
		return nil, "", nil
	}
	return nil, "", fmt.Errorf("unexpected command %v", cmd)
}

func entries(key string, list []string) []map[string]string {
	out := []map[string]string{}
	for _, e := range list {
		if key == "range" {
			// Ceph lists "10.0.0.5/24" as "10.0.0.5:0/24".
			ip, bits, _ := strings.Cut(e, "/")
			e = ip + ":0/" + bits
		}
		out = append(out, map[string]string{key: e, "until": "2031-12-01T23:24:13.718058+0000"})
	}
	return out
}

func cidrs(t *testing.T, s ...string) []CIDR {
	t.Helper()
	c, err := ParseCIDRs("cidrs", s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFenceWithRangeEntries(t *testing.T) {
	m := &fakeMons{ranges: true}
	f := New(m)
	c := cidrs(t, "10.96.1.0/24", "10.96.2.5/32", "10.96.1.0/24")
	for range 2 { // idempotent
		if err := f.Fence(c); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(m.rangesL, []string{"10.96.1.0/24", "10.96.2.5/32"}) || len(m.addrs) != 0 {
		t.Errorf("blocklist ranges %v, addresses %v", m.rangesL, m.addrs)
	}
	for _, cmd := range m.sent {
		if cmd["prefix"] == "osd blocklist" && cmd["blocklistop"] == "add" && cmd["expire"] != float64(Expiry) {
			t.Errorf("expiry %v, want %d", cmd["expire"], Expiry)
		}
	}
	// Entries of single client instances (lock breaks) are no fences.
	m.addrs = append(m.addrs, "10.96.3.8:0/1234")
	list, err := f.List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(list, []string{"10.96.1.0/24", "10.96.2.5/32"}) {
		t.Errorf("List = %v", list)
	}
	for range 2 {
		if err := f.Unfence(c); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.rangesL) != 0 || !slices.Equal(m.addrs, []string{"10.96.3.8:0/1234"}) {
		t.Errorf("after unfence: ranges %v, addresses %v", m.rangesL, m.addrs)
	}
}

// A cluster without range entries gets one entry per address, and a block
// too large for that is refused before any entry is made.
func TestFenceWithoutRangeEntriesFallsBackToAddresses(t *testing.T) {
	m := &fakeMons{ranges: false}
	f := New(m)
	if ok, err := f.RangeSupported(); err != nil || ok {
		t.Fatalf("RangeSupported = %v, %v", ok, err)
	}
	c := cidrs(t, "10.96.1.4/30", "fd00::10/127")
	if err := f.Fence(c); err != nil {
		t.Fatal(err)
	}
	want := []string{"10.96.1.4:0/0", "10.96.1.5:0/0", "10.96.1.6:0/0", "10.96.1.7:0/0", "[fd00::10]:0/0", "[fd00::11]:0/0"}
	if !slices.Equal(m.addrs, want) {
		t.Errorf("entries %v, want %v", m.addrs, want)
	}
	list, err := f.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 6 || list[0] != "10.96.1.4/32" || list[5] != "fd00::11/128" {
		t.Errorf("List = %v", list)
	}
	if err := f.Unfence(c); err != nil || len(m.addrs) != 0 {
		t.Fatalf("Unfence: %v, left %v", err, m.addrs)
	}
	sent := len(m.sent)
	err = f.Fence(cidrs(t, "10.96.1.0/30", "10.96.0.0/16"))
	if csierr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "65536 entries") {
		t.Errorf("fencing a /16 without ranges = %v", err)
	}
	for _, cmd := range m.sent[sent:] {
		if cmd["prefix"] == "osd blocklist" {
			t.Errorf("an entry was made before the refusal: %v", cmd)
		}
	}
	if err := f.Fence(cidrs(t, "10.96.9.0/24")); err != nil || len(m.addrs) != 256 {
		t.Errorf("a /24 without ranges: %v, %d entries", err, len(m.addrs))
	}
}

func TestFenceErrorsCarryTheirCause(t *testing.T) {
	m := &fakeMons{ranges: true, failOn: "10.96.1.0/24"}
	err := New(m).Fence(cidrs(t, "10.96.1.0/24"))
	if csierr.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "10.96.1.0/24") {
		t.Errorf("refused blocklist = %v (%s)", err, csierr.Code(err))
	}
}

func TestParseCIDRs(t *testing.T) {
	for _, bad := range [][]string{nil, {}, {"10.96.1.0"}, {"10.96.1.0/33"}, {"example.com/24"}, {"10.96.1.0/24", ""}} {
		if _, err := ParseCIDRs("cidrs", bad); csierr.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "cidrs") {
			t.Errorf("ParseCIDRs(%q) = %v", bad, err)
		}
	}
	c, err := ParseCIDRs("cidrs", []string{"10.96.1.5/24", "fd00::/64"})
	if err != nil || len(c) != 2 || c[0].Text != "10.96.1.5/24" || c[1].Prefix.Bits() != 64 {
		t.Errorf("ParseCIDRs = %v, %v", c, err)
	}
}

func TestParseClientAddrs(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.0.1:0/2686266785":                       "10.244.0.1/32",
		"[v2:10.96.1.130:0/1234,v1:10.96.1.130:0/1234]": "10.96.1.130/32",
		"[v2:[fd00::5]:0/99]":                           "fd00::5/128",
		"127.0.0.1:0/3370211349":                        "127.0.0.1/32",
	} {
		got, err := parseClientAddrs(in)
		if err != nil || got != netip.MustParsePrefix(want) {
			t.Errorf("parseClientAddrs(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := parseClientAddrs("[v2:0.0.0.0:0/0]"); err == nil {
		t.Error("an unspecified address was taken for the client's")
	}
}
