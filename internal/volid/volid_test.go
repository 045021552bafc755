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
	} {
		if _, err := Decode(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) error = %v, want ErrMalformed", s, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("0001-0009-rook-ceph-0000000000000002-197480ab-6e0f-11ed-b5c4-6efb82c232c4")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Decode(s)
		if err != nil {
			return
		}
		back, err := id.Encode()
		if err != nil {
			t.Fatalf("decoded %q but cannot re-encode: %v", s, err)
		}
		if !strings.EqualFold(back, s) {
			t.Fatalf("round trip %q -> %q", s, back)
		}
	})
}
