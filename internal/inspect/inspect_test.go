package inspect

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testKey = "AQBj" + "bG9zZWQtYnktdGhlLXRlc3QtLWtleS1ub3QtcmVhbA==" // split: no key-shaped literal in the tree

func TestReadSecretsForms(t *testing.T) {
	dir := t.TempDir()
	mounted := filepath.Join(dir, "mounted")
	if err := os.Mkdir(mounted, 0o700); err != nil {
		t.Fatal(err)
	}
	// As a Secret volume: one file per key, a trailing newline allowed.
	_ = os.WriteFile(filepath.Join(mounted, "userID"), []byte("csi-rbd-provisioner\n"), 0o600)
	_ = os.WriteFile(filepath.Join(mounted, "userKey"), []byte(testKey), 0o600)
	lines := filepath.Join(dir, "lines")
	_ = os.WriteFile(lines, []byte("# provisioner\nuserID = csi-rbd-provisioner\nuserKey="+testKey+"\n"), 0o600)
	js := filepath.Join(dir, "json")
	_ = os.WriteFile(js, []byte(`{"userID": "csi-rbd-provisioner", "userKey": "`+testKey+`"}`), 0o600)
	for _, p := range []string{mounted, lines, js} {
		got, err := ReadSecrets(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if got["userID"] != "csi-rbd-provisioner" || got["userKey"] != testKey {
			t.Errorf("%s: read %q", p, got["userID"])
		}
	}
	// A malformed file is refused without quoting it.
	bad := filepath.Join(dir, "bad")
	_ = os.WriteFile(bad, []byte(`{"userKey": `+testKey), 0o600)
	_, err := ReadSecrets(bad)
	if err == nil || strings.Contains(err.Error(), testKey) {
		t.Errorf("malformed JSON: %v", err)
	}
	_ = os.WriteFile(bad, []byte(testKey+"\n"), 0o600)
	if _, err = ReadSecrets(bad); err == nil || strings.Contains(err.Error(), testKey) {
		t.Errorf("a bare key: %v", err)
	}
	if _, err := ReadSecrets(""); err == nil {
		t.Error("no --secrets accepted")
	}
}

// gc's decision: ours, old enough, removable; otherwise the reason.
func TestOrphanDecision(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := &session{opts: &Options{Grace: time.Hour}, now: now, report: &Report{}}
	rm := func() error { return nil }
	for _, tc := range []struct {
		o       Orphan
		collect bool
		why     string
	}{
		{Orphan{Ours: true, Since: now.Add(-2 * time.Hour), remove: rm}, true, ""},
		{Orphan{Ours: true, Since: now.Add(-time.Minute), remove: rm}, false, "younger than the grace period"},
		{Orphan{Ours: true, remove: rm}, false, "age unknown"},
		{Orphan{Ours: false, Since: now.Add(-48 * time.Hour), remove: rm}, false, "not ours"},
		{Orphan{Ours: true, Since: now.Add(-48 * time.Hour)}, false, "nothing gc may do"},
		{Orphan{Ours: true, Since: now.Add(-48 * time.Hour), remove: rm, Why: kubeWhy}, false, kubeWhy},
	} {
		o := tc.o
		s.orphan(&o)
		if o.Collect != tc.collect || o.Why != tc.why {
			t.Errorf("%+v: collect %v (%q), want %v (%q)", tc.o, o.Collect, o.Why, tc.collect, tc.why)
		}
	}
}

func TestTableSaysWhatGCDoes(t *testing.T) {
	now := time.Now()
	loc := Location{ClusterID: "c1", Driver: "rbd", Pool: "rbd"}
	r := &Report{Grace: "1h0m0s", Pools: []*Pool{{Location: loc, Entries: []Entry{{Kind: "volume", RequestName: "pvc-1", Image: "csi-vol-x",
		Exists: true, Linked: true, Modified: now.Add(-3 * time.Hour)}}, Trash: []Trashed{{ID: "1f2e", Name: "csi-snap-z", Ours: true,
		Children: 1, Deleted: now.Add(-25 * time.Hour)}}}},
		Orphans: []*Orphan{
			{Kind: JournalWithoutImage, Location: loc, Name: "volume pvc-2", Ours: true, Since: now.Add(-2 * time.Hour), Collect: true},
			{Kind: ImageWithoutJournal, Location: loc, Name: "csi-vol-y", Why: "not ours"}},
		DryRun: true, Removed: []Removed{{Kind: JournalWithoutImage, Name: "volume pvc-2", Where: loc.String()}}}
	var b bytes.Buffer
	if err := r.WriteTable(&b, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"== c1 rbd pool rbd", "pvc-1", "csi-vol-x", "3h", "journal-without-image", "removes",
		"keeps: not ours", "Kubernetes not read", "trash: 1 entries, 1 of them ours", "1f2e", "csi-snap-z", "clones: 1", "25h", "WOULD REMOVE (dry run; --yes removes): 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestMainRefusesBadCommandLines(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "s")
	_ = os.WriteFile(sec, []byte("userID=a\nuserKey="+testKey+"\n"), 0o600)
	for _, args := range [][]string{
		{"--secrets=" + sec, "-o", "yaml"},
		{"--secrets=" + sec, "--yes"},
		{"--secrets=" + sec, "--type=nfs"},
		{"--secrets=" + sec, "--grace=-1h"},
		{"--secrets=" + sec, "stray"},
		{"--userKey=" + testKey},
		{},
	} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if strings.Contains(out.String()+errb.String(), testKey) {
			t.Errorf("%v: the key was echoed", args)
		}
	}
	// A missing config.json is an error (1), not a crash.
	var out, errb bytes.Buffer
	if code := Main([]string{"--secrets=" + sec, "--configpath=" + filepath.Join(dir, "none.json")}, &out, &errb); code != 1 {
		t.Errorf("missing config.json: exit %d: %s", code, errb.String())
	}
}

// A volume the journal knows is never collected when Kubernetes names it
// under another driver name, when its PVC is still there, or when our
// journal's directory does not name it (another instance's, perhaps).
func TestVolumesKeptWhenAnythingMayStillUseThem(t *testing.T) {
	now := time.Now()
	loc := Location{ClusterID: "c1", Driver: "rbd", Pool: "rbd"}
	newSession := func() *session {
		return &session{opts: &Options{Grace: time.Minute, InstanceID: "default", RBDDriverName: "rbd.csi.ceph.com"}, now: now,
			report: &Report{}, kube: &Kube{ClaimUIDs: map[string]bool{"u1": true}, SnapshotUIDs: map[string]bool{},
				Named: map[string]string{"h-other": "pv/x of driver rook-ceph.rbd.csi.ceph.com"}}}
	}
	old := now.Add(-time.Hour)
	for name, tc := range map[string]struct {
		en      Entry
		orphans int
		collect bool
		errors  int
	}{
		"no PV":                {Entry{Kind: "volume", Handle: "h1", RequestName: "pvc-u9", Exists: true, Linked: true, Modified: old}, 1, true, 0},
		"other driver's PV":    {Entry{Kind: "volume", Handle: "h-other", RequestName: "pvc-u9", Exists: true, Linked: true, Modified: old}, 0, false, 1},
		"PVC still there":      {Entry{Kind: "volume", Handle: "h2", RequestName: "pvc-u1", Exists: true, Linked: true, Modified: old}, 1, false, 0},
		"not in our directory": {Entry{Kind: "volume", Handle: "h3", RequestName: "pvc-u9", Exists: true, Linked: false, Modified: old}, 1, false, 0},
		"named by our PV":      {Entry{Kind: "volume", Handle: "h4", PV: "pv-4", Exists: true, Linked: true, Modified: old}, 0, false, 0},
	} {
		s := newSession()
		s.entryOrphans(loc, &tc.en)
		if len(s.report.Orphans) != tc.orphans || len(s.report.Errors) != tc.errors {
			t.Errorf("%s: %d orphans, %d errors (%v)", name, len(s.report.Orphans), len(s.report.Errors), s.report.Errors)
			continue
		}
		if tc.orphans == 1 && s.report.Orphans[0].Collect != tc.collect {
			t.Errorf("%s: collect %v (%s)", name, s.report.Orphans[0].Collect, s.report.Orphans[0].Why)
		}
	}
}
