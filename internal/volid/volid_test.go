package volid

import (
	"errors"
	"strings"
	"testing"
)

func TestRoundTripKnownID(t *testing.T) {
	// An ID as a Rook cluster named "rook-ceph" hands out for pool 2.
	const s = "0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4"
	id, err := Decode(s)
	if err != nil {
		t.Fatal(err)
	}
	want := ID{ClusterID: "rook-ceph", LocationID: 2, UUID: "197480ab-6e0f-11ed-b5c4-6efb82c232c4"}
	if id != want {
		t.Fatalf("Decode(%q) = %+v, want %+v", s, id, want)
	}
	back, err := id.Encode()
	if err != nil || back != s {
		t.Fatalf("Encode() = %q, %v; want %q", back, err, s)
	}
}

func TestClusterIDWithDashesAndMaxLength(t *testing.T) {
	cluster := strings.Repeat("a-", 18) // 36 bytes, the longest allowed
	id := ID{ClusterID: cluster, LocationID: 0x7fff, UUID: "00000000-1111-2222-3333-444444444444"}
	s, err := id.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(s) > MaxLength {
		t.Fatalf("encoded ID is %d bytes", len(s))
	}
	got, err := Decode(s)
	if err != nil || got != id {
		t.Fatalf("Decode(%q) = %+v, %v", s, got, err)
	}
}

func TestEncodeRejects(t *testing.T) {
	good := "00000000-1111-2222-3333-444444444444"
	for name, id := range map[string]ID{
		"empty cluster":     {ClusterID: "", UUID: good},
		"cluster too long":  {ClusterID: strings.Repeat("x", 37), UUID: good},
		"short uuid":        {ClusterID: "c", UUID: "abc"},
		"negative location": {ClusterID: "c", LocationID: -1, UUID: good},
		"uppercase uuid":    {ClusterID: "c", UUID: "197480AB-6E0F-11ED-B5C4-6EFB82C232C4"},
		"not a uuid":        {ClusterID: "c", UUID: "00000000_1111_2222_3333_444444444444"},
	} {
		if _, err := id.Encode(); err == nil {
			t.Errorf("%s: Encode succeeded", name)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"pvc-1234",
		"0002-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // version
		"0001-0008-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // length
		"0001-0009-rook-ceph-000000000000000z-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // pool
		"0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232cx", // uuid
		"0001-0009-rook-ceph_0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // separator
		"0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4" + strings.Repeat("0", 60),
		"0001-0009-rook-ceph-+000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // sign in the pool field
		"0001-0009-rook-ceph-8000000000000000-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // pool beyond int64
		"0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4+6efb82c232c4", // uuid separator
	} {
		if _, err := Decode(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) error = %v, want ErrMalformed", s, err)
		}
	}
}

// TestDecodeAcceptsOnlyTheCanonicalSpelling: strconv would read uppercase
// hex digits, but Encode never writes them, and an ID with a second
// spelling would be a second volume to the journal and a second key to the
// operation locks.
func TestDecodeAcceptsOnlyTheCanonicalSpelling(t *testing.T) {
	const s = "0001-000a-cluster-a1-000000000000002a-197480ab-6e0f-11ed-b5c4-6efb82c232c4"
	id, err := Decode(s)
	if err != nil || id.ClusterID != "cluster-a1" || id.LocationID != 42 {
		t.Fatalf("Decode(%q) = %+v, %v", s, id, err)
	}
	for _, v := range []string{
		"0001-000A-cluster-a1-000000000000002a-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // length field
		"0001-000a-cluster-a1-000000000000002A-197480ab-6e0f-11ed-b5c4-6efb82c232c4", // pool field
		"0001-000a-cluster-a1-000000000000002a-197480AB-6e0f-11ed-b5c4-6efb82c232c4", // uuid
		"0001-000a-cluster-a1-000000000000002a-197480ab-6e0f-11ed-b5c4-6EFB82C232C4", // uuid
		"0001-000a-cluster-a1-000000000000002a-197480AB-6E0F-11ED-B5C4-6EFB82C232C4", // all of it
	} {
		if got, err := Decode(v); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %+v, %v; want ErrMalformed (it is a second spelling of %q)", v, got, err, s)
		}
	}
	// The clusterID is not hex: its case is its own, and another case is
	// another cluster.
	upper, err := Decode("0001-000a-CLUSTER-A1-000000000000002a-197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	if err != nil || upper.ClusterID != "CLUSTER-A1" {
		t.Errorf("an uppercase clusterID: %+v, %v", upper, err)
	}
}
