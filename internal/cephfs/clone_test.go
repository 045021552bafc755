package cephfs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/leanceph/cephcsi/internal/config"
	"github.com/leanceph/cephcsi/internal/csierr"
	"github.com/leanceph/cephcsi/internal/journal"
	"github.com/leanceph/cephcsi/internal/service"
)

// cephErr is an error with a Ceph errno, as go-ceph returns them.
type cephErr syscall.Errno

func (e cephErr) Error() string  { return fmt.Sprintf("ceph errno %d", int(e)) }
func (e cephErr) ErrorCode() int { return -int(e) }

// fakeAdmin records calls and answers from canned results; errs holds one
// error per method, used once.
type fakeAdmin struct {
	calls []string
	errs  map[string][]error
	info  *admin.SubVolumeInfo
	clone *admin.CloneStatus
	// states, when set, are answered by successive CloneStatus calls
	// before clone.
	states []admin.CloneState
}

func (f *fakeAdmin) call(name string, args ...any) error {
	f.calls = append(f.calls, strings.TrimSpace(fmt.Sprintln(append([]any{name}, args...)...)))
	if q := f.errs[name]; len(q) > 0 {
		f.errs[name] = q[1:]
		return q[0]
	}
	return nil
}

func (f *fakeAdmin) SetMetadata(volume, group, subvolume, key, value string) error {
	return f.call("SetMetadata", subvolume, key, value)
}
func (f *fakeAdmin) SetSnapshotMetadata(volume, group, subvolume, snapname, key, value string) error {
	return f.call("SetSnapshotMetadata", subvolume, snapname, key, value)
}
func (f *fakeAdmin) CreateSubVolumeGroup(volume, name string, o *admin.SubVolumeGroupOptions) error {
	return f.call("CreateSubVolumeGroup", name)
}
func (f *fakeAdmin) CreateSubVolume(volume, group, name string, o *admin.SubVolumeOptions) error {
	return f.call("CreateSubVolume", name, int64(o.Size))
}
func (f *fakeAdmin) RemoveSubVolumeWithFlags(volume, group, name string, o admin.SubVolRmFlags) error {
	return f.call("RemoveSubVolume", name, o.Force, o.RetainSnapshots)
}
func (f *fakeAdmin) ResizeSubVolume(volume, group, name string, newSize admin.QuotaSize, noShrink bool) (*admin.SubVolumeResizeResult, error) {
	return &admin.SubVolumeResizeResult{}, f.call("ResizeSubVolume", name, newSize)
}
func (f *fakeAdmin) SubVolumeInfo(volume, group, name string) (*admin.SubVolumeInfo, error) {
	if err := f.call("SubVolumeInfo", name); err != nil {
		return nil, err
	}
	return f.info, nil
}
func (f *fakeAdmin) SubVolumePath(volume, group, name string) (string, error) {
	return "/p", f.call("SubVolumePath", name)
}
func (f *fakeAdmin) CreateSubVolumeSnapshot(volume, group, source, name string) error {
	return f.call("CreateSubVolumeSnapshot", source, name)
}
func (f *fakeAdmin) RemoveSubVolumeSnapshot(volume, group, subvolume, name string) error {
	return f.call("RemoveSubVolumeSnapshot", subvolume, name)
}
func (f *fakeAdmin) SubVolumeSnapshotInfo(volume, group, subvolume, name string) (*admin.SubVolumeSnapshotInfo, error) {
	return &admin.SubVolumeSnapshotInfo{}, f.call("SubVolumeSnapshotInfo", subvolume, name)
}
func (f *fakeAdmin) CloneSubVolumeSnapshot(volume, group, subvolume, snapshot, name string, o *admin.CloneOptions) error {
	return f.call("CloneSubVolumeSnapshot", subvolume, snapshot, name)
}
func (f *fakeAdmin) CloneStatus(volume, group, clone string) (*admin.CloneStatus, error) {
	if err := f.call("CloneStatus", clone); err != nil {
		return nil, err
	}
	if len(f.states) > 0 {
		st := &admin.CloneStatus{State: f.states[0]}
		f.states = f.states[1:]
		return st, nil
	}
	return f.clone, nil
}
func (f *fakeAdmin) CancelClone(volume, group, clone string) error {
	return f.call("CancelClone", clone)
}

func fakeFS(a *fakeAdmin) *fsConn {
	if a.errs == nil {
		a.errs = map[string][]error{}
	}
	return &fsConn{admin: a, fs: &filesystem{Name: "myfs", ID: 1}, group: "csi"}
}

func snapSrc() *contentSource {
	return &contentSource{snapshot: &journal.Entry{ImageName: "csi-snap-1", Source: "csi-vol-src"}, size: 1 << 20}
}

func TestStartCloneErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{cephErr(syscall.EAGAIN), codes.ResourceExhausted},
		{cephErr(syscall.ENOENT), codes.NotFound},
	} {
		a := &fakeAdmin{}
		f := fakeFS(a)
		a.errs["CloneSubVolumeSnapshot"] = []error{tc.err}
		if err := startClone(f, "csi-vol-new", "", snapSrc()); csierr.Code(err) != tc.code {
			t.Errorf("clone failing with %v: %v, want %s", tc.err, err, tc.code)
		}
	}
	a := &fakeAdmin{}
	f := fakeFS(a)
	a.errs["CloneSubVolumeSnapshot"] = []error{cephErr(syscall.EEXIST)}
	if err := startClone(f, "csi-vol-new", "", snapSrc()); err != nil {
		t.Errorf("a clone that already exists: %v, want success", err)
	}
}

func TestStartCloneFromVolumeUsesATemporarySnapshot(t *testing.T) {
	a := &fakeAdmin{}
	f := fakeFS(a)
	a.errs["CreateSubVolumeSnapshot"] = []error{cephErr(syscall.EEXIST)} // left by an earlier attempt
	if err := startClone(f, "csi-vol-new", "", &contentSource{volume: "csi-vol-src"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"CreateSubVolumeSnapshot csi-vol-src csi-vol-new", "CloneSubVolumeSnapshot csi-vol-src csi-vol-new csi-vol-new"}
	if !slices.Equal(a.calls, want) {
		t.Errorf("calls = %q, want %q", a.calls, want)
	}
}

func TestCloneProgress(t *testing.T) {
	for state, code := range map[admin.CloneState]codes.Code{admin.ClonePending: codes.Aborted, admin.CloneInProgress: codes.Aborted} {
		if err := cloneProgress("v", &admin.CloneStatus{State: state}); csierr.Code(err) != code {
			t.Errorf("%s: %v, want %s", state, err, code)
		}
	}
	if err := cloneProgress("v", &admin.CloneStatus{State: admin.CloneComplete}); err != nil {
		t.Errorf("complete: %v", err)
	}
	for _, state := range []admin.CloneState{admin.CloneFailed, "canceled"} {
		if err := cloneProgress("v", &admin.CloneStatus{State: state}); !errors.Is(err, errCloneFailed) {
			t.Errorf("%s: %v, want errCloneFailed", state, err)
		}
	}
}

func TestCreateSubvolumeMakesTheGroupOnce(t *testing.T) {
	a := &fakeAdmin{}
	f := fakeFS(a)
	a.errs["CreateSubVolume"] = []error{cephErr(syscall.ENOENT)} // the group does not exist yet
	if err := f.createSubvolume("csi-vol-1", 8<<20, ""); err != nil {
		t.Fatal(err)
	}
	want := []string{"CreateSubVolume csi-vol-1 8388608", "CreateSubVolumeGroup csi", "CreateSubVolume csi-vol-1 8388608"}
	if !slices.Equal(a.calls, want) {
		t.Errorf("calls = %q, want %q", a.calls, want)
	}
}

func TestRemoveSubvolumeCancelsARunningClone(t *testing.T) {
	a := &fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneInProgress,
		Source: admin.CloneSource{SubVolume: "csi-vol-src", Snapshot: "csi-vol-1"}}}
	f := fakeFS(a)
	a.errs["RemoveSubVolume"] = []error{cephErr(syscall.EAGAIN)}
	src, err := f.removeSubvolume("csi-vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if src == nil || src.Snapshot != "csi-vol-1" {
		t.Errorf("clone source = %+v", src)
	}
	want := []string{"RemoveSubVolume csi-vol-1 false true", "CloneStatus csi-vol-1", "CancelClone csi-vol-1", "RemoveSubVolume csi-vol-1 true false"}
	if !slices.Equal(a.calls, want) {
		t.Errorf("calls = %q, want %q", a.calls, want)
	}
	a = &fakeAdmin{}
	f = fakeFS(a)
	a.errs["RemoveSubVolume"] = []error{cephErr(syscall.ENOENT)}
	if _, err := f.removeSubvolume("gone"); err != nil {
		t.Errorf("removing a missing subvolume: %v", err)
	}
}

func TestRemoveSnapshotWithPendingClones(t *testing.T) {
	a := &fakeAdmin{}
	f := fakeFS(a)
	a.errs["RemoveSubVolumeSnapshot"] = []error{cephErr(syscall.EAGAIN)}
	if err := f.removeSnapshot("v", "s"); csierr.Code(err) != codes.FailedPrecondition {
		t.Errorf("snapshot with pending clones: %v, want FailedPrecondition", err)
	}
	a.errs["RemoveSubVolumeSnapshot"] = []error{cephErr(syscall.ENOENT)}
	if err := f.removeSnapshot("v", "s"); err != nil {
		t.Errorf("missing snapshot: %v", err)
	}
}

func TestProvisionSubvolumeClonePaths(t *testing.T) {
	s := &ControllerServer{Deps: &service.Deps{Options: &config.Options{}}}
	entry := &journal.Entry{RequestName: "pvc", ImageName: "csi-vol-1"}
	r := &csi.CapacityRange{RequiredBytes: 4 << 20}

	// A fresh clone is started and reported as copying.
	a := &fakeAdmin{clone: &admin.CloneStatus{State: admin.ClonePending}}
	f := fakeFS(a)
	a.errs["SubVolumeInfo"] = []error{cephErr(syscall.ENOENT)}
	_, started, err := s.provisionSubvolume(context.Background(), f, entry, false, "", r, 4<<20, snapSrc())
	if csierr.Code(err) != codes.Aborted || !started {
		t.Errorf("clone of a name without subvolume: started %v, %v; want Aborted", started, err)
	}
	// A new reservation has no subvolume to look at: the clone starts at once.
	a = &fakeAdmin{clone: &admin.CloneStatus{State: admin.ClonePending}}
	f = fakeFS(a)
	if _, started, err = s.provisionSubvolume(context.Background(), f, entry, true, "", r, 4<<20, snapSrc()); csierr.Code(err) != codes.Aborted || !started {
		t.Errorf("fresh clone: started %v, %v; want Aborted", started, err)
	}
	if slices.ContainsFunc(a.calls, func(c string) bool { return strings.HasPrefix(c, "SubVolumeInfo") }) {
		t.Errorf("a fresh clone read the info of its new name: %q", a.calls)
	}

	// A retry that finds it complete drops the temporary snapshot of a
	// volume source and grows the quota to the request.
	a = &fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneComplete},
		info: &admin.SubVolumeInfo{Type: "clone", State: admin.StateComplete, Path: "/volumes/csi/csi-vol-1/u", BytesQuota: admin.ByteCount(1 << 20)}}
	f = fakeFS(a)
	a.errs["SubVolumeInfo"] = []error{cephErr(syscall.EAGAIN)} // not complete at the first look
	res, started, err := s.provisionSubvolume(context.Background(), f, entry, false, "", r, 4<<20, &contentSource{volume: "csi-vol-src", size: 1 << 20})
	if err != nil || started || res.size != 4<<20 || res.path != "/volumes/csi/csi-vol-1/u" {
		t.Fatalf("completed clone = %+v, started %v, %v", res, started, err)
	}
	for _, want := range []string{"RemoveSubVolumeSnapshot csi-vol-src csi-vol-1", "ResizeSubVolume csi-vol-1 4194304"} {
		if !slices.Contains(a.calls, want) {
			t.Errorf("calls %q lack %q", a.calls, want)
		}
	}

	// A plain subvolume under the name does not match a request with a source.
	a = &fakeAdmin{info: &admin.SubVolumeInfo{Type: "subvolume", State: admin.StateComplete, BytesQuota: admin.ByteCount(4 << 20)}}
	f = fakeFS(a)
	if _, _, err := s.provisionSubvolume(context.Background(), f, entry, false, "", r, 4<<20, snapSrc()); csierr.Code(err) != codes.AlreadyExists {
		t.Errorf("source mismatch: %v, want AlreadyExists", err)
	}

	// A clone that failed is reported as such, for CreateVolume to remove.
	a = &fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneFailed}}
	f = fakeFS(a)
	a.errs["SubVolumeInfo"] = []error{cephErr(syscall.EAGAIN)}
	if _, _, err := s.provisionSubvolume(context.Background(), f, entry, false, "", r, 4<<20, snapSrc()); !errors.Is(err, errCloneFailed) {
		t.Errorf("failed clone: %v, want errCloneFailed", err)
	}
}

// With --clonewait a short copy finishes inside the call; without it, or
// past it, the call answers Aborted after one look.
func TestAwaitCloneWithinCloneWait(t *testing.T) {
	entry := &journal.Entry{RequestName: "pvc", ImageName: "csi-vol-1"}
	copying := []admin.CloneState{admin.ClonePending, admin.CloneInProgress, admin.CloneInProgress}
	complete := &admin.CloneStatus{State: admin.CloneComplete}

	waiting := &ControllerServer{Deps: &service.Deps{Options: &config.Options{CloneWait: 5 * time.Second}}}
	a := &fakeAdmin{states: slices.Clone(copying), clone: complete}
	if err := waiting.awaitClone(context.Background(), fakeFS(a), entry, snapSrc()); err != nil {
		t.Errorf("copy finishing within --clonewait: %v", err)
	}
	if n := len(a.calls); n != 4 {
		t.Errorf("%d clone status reads, want 4 (three while copying, one complete)", n)
	}

	atOnce := &ControllerServer{Deps: &service.Deps{Options: &config.Options{}}}
	a = &fakeAdmin{states: slices.Clone(copying), clone: complete}
	if err := atOnce.awaitClone(context.Background(), fakeFS(a), entry, snapSrc()); csierr.Code(err) != codes.Aborted || len(a.calls) != 1 {
		t.Errorf("without --clonewait: %v after %d reads, want Aborted after 1", err, len(a.calls))
	}

	// The call's own deadline bounds the wait too.
	a = &fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneInProgress}}
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := waiting.awaitClone(ctx, fakeFS(a), entry, snapSrc()); csierr.Code(err) != codes.Aborted {
		t.Errorf("copy outlasting the deadline: %v, want Aborted", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("waited %v with a 1.2 s deadline, want the answer a second before it", d)
	}
}

// A retry of a clone this driver started reads only the clone's status
// while it copies; a complete, failed or missing clone goes the full path.
func TestCloneInFlight(t *testing.T) {
	s := &ControllerServer{Deps: &service.Deps{Options: &config.Options{}}}
	entry := &journal.Entry{RequestName: "pvc", ImageName: "csi-vol-1"}
	src := admin.CloneSource{Volume: "myfs", Group: "csi", SubVolume: "csi-vol-src", Snapshot: "csi-vol-1"}

	a := &fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneInProgress, Source: src}}
	if complete, err := s.cloneInFlight(fakeFS(a), entry); csierr.Code(err) != codes.Aborted || complete {
		t.Errorf("copying: complete %v, %v; want Aborted", complete, err)
	}
	if want := []string{"CloneStatus csi-vol-1"}; !slices.Equal(a.calls, want) {
		t.Errorf("calls while copying %q, want %q", a.calls, want)
	}
	for _, c := range []struct {
		a        *fakeAdmin
		complete bool
	}{
		// The manager names no source for a complete clone.
		{&fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneComplete}}, true},
		{&fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneComplete, Source: src}}, true},
		{&fakeAdmin{clone: &admin.CloneStatus{State: admin.CloneFailed, Source: src}}, false},
		{&fakeAdmin{errs: map[string][]error{"CloneStatus": {cephErr(syscall.ENOENT)}}}, false},
	} {
		complete, err := s.cloneInFlight(fakeFS(c.a), entry)
		if err != nil || complete != c.complete {
			t.Errorf("status %+v: complete %v, %v; want %v and nil (the full path decides)", c.a.clone, complete, err, c.complete)
		}
		if want := []string{"CloneStatus csi-vol-1"}; !slices.Equal(c.a.calls, want) {
			t.Errorf("calls %q, want %q only", c.a.calls, want)
		}
	}
}

func TestClonePollAfter(t *testing.T) {
	if d := clonePollAfter(0, 0); d != clonePollFirst {
		t.Errorf("first wait %v, want %v", d, clonePollFirst)
	}
	if d := clonePollAfter(clonePollQuick/2, clonePollFirst); d != clonePollFirst {
		t.Errorf("wait within the first second %v, want %v", d, clonePollFirst)
	}
	d := clonePollFirst
	for range 20 {
		d = clonePollAfter(2*clonePollQuick, d)
	}
	if d != clonePollMax {
		t.Errorf("wait after a long copy %v, want %v", d, clonePollMax)
	}
}
