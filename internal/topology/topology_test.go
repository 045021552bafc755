package topology

import (
	"reflect"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
)

func TestForNodeKeysByDriverAndLabelName(t *testing.T) {
	labels := map[string]string{"topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "r1", "other": "x"}
	got, err := ForNode(labels, []string{"topology.kubernetes.io/zone", "topology.kubernetes.io/region"}, "Rook-Ceph.rbd.csi.ceph.com")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"topology.rook-ceph.rbd.csi.ceph.com/zone": "zone-a", "topology.rook-ceph.rbd.csi.ceph.com/region": "r1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ForNode = %v, want %v", got, want)
	}
	if _, err := ForNode(labels, []string{"rack"}, "rbd.csi.ceph.com"); err == nil {
		t.Error("a missing domain label was accepted")
	}
	if _, err := ForNode(labels, []string{"other", "other"}, "rbd.csi.ceph.com"); err == nil {
		t.Error("a duplicate domain label was accepted")
	}
	if got, err := ForNode(labels, nil, "rbd.csi.ceph.com"); got != nil || err != nil {
		t.Errorf("no domain labels gave %v, %v", got, err)
	}
	if _, err := ForNode(labels, []string{"other"}, "a-driver-name-that-is-far-too-long-for-a-label.csi.ceph.com"); err == nil {
		t.Error("a prefix longer than 63 characters was accepted")
	}
}

func TestSelectPrefersPreferredThenRequisite(t *testing.T) {
	pools, err := ParsePools(`[{"poolName":"pool-a","domainSegments":[{"domainLabel":"zone","value":"zone-a"}]},
		{"poolName":"pool-b","dataPool":"ec-b","domainSegments":[{"domainLabel":"zone","value":"zone-b"}]}]`)
	if err != nil {
		t.Fatal(err)
	}
	seg := func(z string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{"topology.rbd.csi.ceph.com/zone": z}}
	}
	c, err := Select(pools, &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("zone-a"), seg("zone-b")}, Preferred: []*csi.Topology{seg("zone-b")}})
	if err != nil || c.Pool != "pool-b" || c.DataPool != "ec-b" || c.Segments["topology.rbd.csi.ceph.com/zone"] != "zone-b" {
		t.Fatalf("Select = %+v, %v; want pool-b in zone-b", c, err)
	}
	c, err = Select(pools, &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("zone-c"), seg("zone-a")}, Preferred: []*csi.Topology{seg("zone-c")}})
	if err != nil || c.Pool != "pool-a" {
		t.Fatalf("Select fell back to %+v, %v; want pool-a", c, err)
	}
	if _, err := Select(pools, &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("zone-c")}}); csierr.Code(err) != codes.ResourceExhausted {
		t.Errorf("no matching pool: %v, want ResourceExhausted", err)
	}
	if c, err := Select(pools, nil); c != nil || err != nil {
		t.Errorf("no requirement gave %+v, %v", c, err)
	}
}

func TestParsePoolsNamesTheParameter(t *testing.T) {
	for _, bad := range []string{"{", `[]`, `[{"domainSegments":[{"domainLabel":"zone","value":"a"}]}]`, `[{"poolName":"p"}]`} {
		if _, err := ParsePools(bad); csierr.Code(err) != codes.InvalidArgument {
			t.Errorf("ParsePools(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestCrushLocationFromNodeLabels(t *testing.T) {
	labels := map[string]string{"topology.kubernetes.io/zone": "z1", "topology.kubernetes.io/region": "r1", "topology.rook.io/rack": "rack7"}
	loc := CrushLocation(labels, []string{"topology.kubernetes.io/zone", "topology.kubernetes.io/region", "topology.rook.io/host"})
	if !reflect.DeepEqual(loc, map[string]string{"zone": "z1", "region": "r1"}) {
		t.Fatalf("CrushLocation = %v", loc)
	}
	if got := KernelCrushLocation(loc); got != "region:r1|zone:z1" {
		t.Errorf("KernelCrushLocation = %q", got)
	}
	if got := LibradosCrushLocation(loc); got != "region=r1 zone=z1" {
		t.Errorf("LibradosCrushLocation = %q", got)
	}
	if CrushLocation(labels, []string{"absent"}) != nil {
		t.Error("a location from no label")
	}
}
