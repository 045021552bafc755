package inspect

import (
	"context"
	"sort"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/kube"
	"github.com/leanceph/cephcsi/internal/kube/kubetest"
)

// fakeAPI serves list responses by path (the first page of each, as
// kube.List asks for it); a path it lacks is a 404, as for snapshot CRDs
// that are not installed.
func fakeAPI(t *testing.T, lists map[string]string) *kube.Client {
	t.Helper()
	pages := make(map[string]string, len(lists))
	for path, body := range lists {
		pages[path+"?limit=500"] = body
	}
	return &kube.Client{Config: kubetest.APIServer(t, pages)}
}

const (
	pvList = `{"items":[
	 {"metadata":{"name":"pv-a"},"spec":{"csi":{"driver":"rbd.csi.ceph.com","volumeHandle":"h-a"},"claimRef":{"namespace":"ns","name":"data"}},"status":{"phase":"Bound"}},
	 {"metadata":{"name":"pv-static"},"spec":{"csi":{"driver":"rbd.csi.ceph.com","volumeHandle":"img","volumeAttributes":{"staticVolume":"true"}}},"status":{"phase":"Available"}},
	 {"metadata":{"name":"pv-other"},"spec":{"csi":{"driver":"other.csi","volumeHandle":"h-o"}}},
	 {"metadata":{"name":"pv-nfs"},"spec":{}}]}`
	pvcList = `{"items":[{"metadata":{"uid":"u1"}}]}`
)

func TestReadKubeFromTheAPI(t *testing.T) {
	c := fakeAPI(t, map[string]string{
		"/api/v1/persistentvolumes":      pvList,
		"/api/v1/persistentvolumeclaims": pvcList,
		"/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents": `{"items":[
		 {"metadata":{"name":"c1"},"spec":{"driver":"rbd.csi.ceph.com","volumeSnapshotRef":{"namespace":"ns","name":"s1"}},"status":{"snapshotHandle":"sh-1"}},
		 {"metadata":{"name":"c2"},"spec":{"driver":"rbd.csi.ceph.com","source":{"snapshotHandle":"sh-pre"}}},
		 {"metadata":{"name":"c3"},"spec":{"driver":"other.csi"},"status":{"snapshotHandle":"sh-o"}}]}`,
		"/apis/snapshot.storage.k8s.io/v1/volumesnapshots": `{"items":[{"metadata":{"uid":"su1"}}]}`,
	})
	k, err := readKube(context.Background(), c, []string{"rbd.csi.ceph.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.PVs) != 2 || k.PVs[0] != (PV{Name: "pv-a", Driver: "rbd.csi.ceph.com", Handle: "h-a", Phase: "Bound", Claim: "ns/data"}) ||
		!k.PVs[1].Static {
		t.Errorf("PVs = %+v", k.PVs)
	}
	if len(k.Contents) != 2 || k.Contents[0] != (Content{Name: "c1", Driver: "rbd.csi.ceph.com", Handle: "sh-1", Snapshot: "ns/s1"}) ||
		k.Contents[1].Handle != "sh-pre" {
		t.Errorf("Contents = %+v", k.Contents)
	}
	var named []string
	for h := range k.Named {
		named = append(named, h)
	}
	sort.Strings(named)
	if strings.Join(named, " ") != "h-a h-o img sh-1 sh-o sh-pre" {
		t.Errorf("named handles = %v: every driver's PVs and contents count", named)
	}
	if !k.ClaimUIDs["u1"] || !k.SnapshotUIDs["su1"] {
		t.Errorf("UIDs = %v %v", k.ClaimUIDs, k.SnapshotUIDs)
	}
}

func TestReadKubeWithoutSnapshotCRDs(t *testing.T) {
	c := fakeAPI(t, map[string]string{"/api/v1/persistentvolumes": pvList, "/api/v1/persistentvolumeclaims": pvcList})
	k, err := readKube(context.Background(), c, []string{"rbd.csi.ceph.com"})
	if err != nil || len(k.PVs) != 2 || len(k.Contents) != 0 {
		t.Errorf("without snapshot CRDs: %+v, %v", k, err)
	}
	if _, err := readKube(context.Background(), fakeAPI(t, map[string]string{}), nil); csierr.Code(err) != codes.Unavailable ||
		!strings.Contains(err.Error(), "PersistentVolumes") {
		t.Errorf("no PV API: %v, want Unavailable naming PersistentVolumes", err)
	}
	if _, err := ReadKube(context.Background(), "/nonexistent/kubeconfig", nil); csierr.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("missing kubeconfig: %v, want InvalidArgument naming --kubeconfig", err)
	}
}
