package volid

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// canonicalUUID is the only UUID spelling an ID may carry, written out
// independently of validUUID.
var canonicalUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// upperFields returns s with the hex fields and the uuid of a decoded ID
// in uppercase, the clusterID left as it is.
func upperFields(s string, clusterLen int) string {
	head, cluster, tail := s[:10], s[10:10+clusterLen], s[10+clusterLen:]
	return strings.ToUpper(head) + cluster + strings.ToUpper(tail)
}

// FuzzDecode: Decode never panics; what it refuses is ErrMalformed; what
// it accepts is within the bounds of the format and re-encodes to exactly
// the same string, and no other spelling of its fields decodes.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4",
		"0001-0024-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-0000000000007fff-00000000-1111-2222-3333-444444444444",
		"0001-0001-c-7fffffffffffffff-ffffffff-ffff-ffff-ffff-ffffffffffff",
		"0001-0009-ROOK-CEPH-000000000000000A-197480AB-6E0F-11ED-B5C4-6EFB82C232C4",
		"0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4x",
		"0001-0000--0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4",
		"0002-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Decode(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%q) failed with %v, not ErrMalformed", s, err)
			}
			if id != (ID{}) {
				t.Fatalf("Decode(%q) failed but returned %+v", s, id)
			}
			return
		}
		if len(s) > MaxLength {
			t.Fatalf("accepted %q of %d bytes, more than %d", s, len(s), MaxLength)
		}
		if n := len(id.ClusterID); n == 0 || n > MaxClusterIDLength {
			t.Fatalf("accepted %q with a clusterID of %d bytes", s, n)
		}
		if id.LocationID < 0 {
			t.Fatalf("accepted %q with location %d", s, id.LocationID)
		}
		if !canonicalUUID.MatchString(id.UUID) {
			t.Fatalf("accepted %q with uuid %q", s, id.UUID)
		}
		back, err := id.Encode()
		if err != nil {
			t.Fatalf("decoded %q but cannot re-encode %+v: %v", s, id, err)
		}
		if back != s {
			t.Fatalf("round trip %q -> %+v -> %q", s, id, back)
		}
		if up := upperFields(s, len(id.ClusterID)); up != s {
			if other, err := Decode(up); err == nil {
				t.Fatalf("%q and %q both decode (to %+v and %+v)", s, up, id, other)
			}
		}
	})
}

// FuzzEncode: Encode succeeds exactly for a clusterID of 1 to 36 bytes, a
// non-negative location and a canonical UUID, and what it writes decodes to
// the same ID.
func FuzzEncode(f *testing.F) {
	f.Add("rook-ceph", int64(2), "197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	f.Add(strings.Repeat("a-", 18), int64(0x7fffffffffffffff), "00000000-1111-2222-3333-444444444444")
	f.Add("c", int64(-1), "197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	f.Add("", int64(0), "197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	f.Add("c", int64(0), "197480AB-6E0F-11ED-B5C4-6EFB82C232C4")
	f.Add("0001-0009-rook", int64(1), "197480ab-6e0f-11ed-b5c4-6efb82c232c")
	f.Fuzz(func(t *testing.T, cluster string, loc int64, uuid string) {
		id := ID{ClusterID: cluster, LocationID: loc, UUID: uuid}
		s, err := id.Encode()
		valid := len(cluster) >= 1 && len(cluster) <= MaxClusterIDLength && loc >= 0 && canonicalUUID.MatchString(uuid)
		if (err == nil) != valid {
			t.Fatalf("Encode(%+v) = %q, %v; want success %v", id, s, err, valid)
		}
		if err != nil {
			return
		}
		if len(s) > MaxLength {
			t.Fatalf("Encode(%+v) = %q, %d bytes", id, s, len(s))
		}
		back, err := Decode(s)
		if err != nil || back != id {
			t.Fatalf("Decode(Encode(%+v)) = %+v, %v", id, back, err)
		}
	})
}
