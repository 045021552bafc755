package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// The kinds of disagreement inspect reports. Each says, in Ours, whether
// the Ceph side belongs to this driver by the rules of docs/safety.md (the
// journal knows it, or the driver marked it), which gc requires.
const (
	// A journal entry (or a directory key) whose image or subvolume does
	// not exist: a create that died after reserving the name.
	JournalWithoutImage = "journal-without-image"
	// An image or subvolume named like ours that no journal entry knows:
	// never ours to remove (its entry may have been lost by hand).
	ImageWithoutJournal = "image-without-journal"
	// A volume the journal knows that no PersistentVolume of our driver
	// names (needs Kubernetes).
	VolumeWithoutPV = "volume-without-pv"
	// A PersistentVolume of our driver whose volume is not on the cluster.
	PVWithoutVolume = "pv-without-volume"
	// A snapshot the journal knows that no VolumeSnapshotContent names
	// (needs Kubernetes).
	SnapshotWithoutContent = "snapshot-without-content"
	// A VolumeSnapshotContent of our driver whose snapshot is gone.
	ContentWithoutSnapshot = "content-without-snapshot"
	// A -temp image (the intermediate of a PVC clone) whose volume image
	// is missing.
	LeftoverTemp = "leftover-temp"
	// A snapshot the driver takes for the time of one call (named after a
	// journal entry) still on its source image.
	LeftoverSnapshot = "leftover-snapshot"
	// An image the driver moved to the RBD trash (marked cephcsi.trashed)
	// that no clone needs any more.
	TrashUnneeded = "trash-unneeded"
)

// Location is where objects live: a pool (RBD) or filesystem (CephFS) of a
// cluster, with its RADOS namespace.
type Location struct {
	ClusterID string `json:"clusterID"`
	Driver    string `json:"driver"` // rbd or cephfs
	Pool      string `json:"pool"`   // RBD pool or CephFS filesystem
	Namespace string `json:"namespace,omitempty"`
	// Group is the CephFS subvolume group.
	Group string `json:"group,omitempty"`
}

func (l Location) String() string {
	s := l.ClusterID + " " + l.Driver + " "
	if l.Driver == "cephfs" {
		s += "filesystem " + l.Pool + " group " + l.Group
	} else {
		s += "pool " + l.Pool
	}
	if l.Namespace != "" {
		s += " namespace " + l.Namespace
	}
	return s
}

// Entry is one volume or snapshot as the journal and the cluster show it,
// joined to its Kubernetes objects.
type Entry struct {
	Kind        string    `json:"kind"` // volume or snapshot
	UUID        string    `json:"uuid"`
	Handle      string    `json:"handle,omitempty"` // the CSI volume or snapshot ID
	RequestName string    `json:"requestName,omitempty"`
	Image       string    `json:"image"` // image, subvolume or subvolume snapshot
	Exists      bool      `json:"exists"`
	Source      string    `json:"source,omitempty"`   // snapshots: the source image or subvolume
	Temp        bool      `json:"temp,omitempty"`     // its -temp intermediate exists
	Linked      bool      `json:"linked"`             // the journal's directory names it
	Complete    bool      `json:"complete,omitempty"` // RBD snapshots: the restore snapshot exists
	Modified    time.Time `json:"modified"`           // last write of the journal entry
	PV          string    `json:"pv,omitempty"`
	PVPhase     string    `json:"pvPhase,omitempty"`
	Claim       string    `json:"claim,omitempty"`          // namespace/name of the PVC
	Content     string    `json:"content,omitempty"`        // VolumeSnapshotContent
	SnapshotRef string    `json:"volumeSnapshot,omitempty"` // namespace/name of the VolumeSnapshot
}

// Trashed is one entry of the RBD trash.
type Trashed struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Ours     bool      `json:"ours"` // marked cephcsi.trashed
	Children int       `json:"children"`
	Deleted  time.Time `json:"deleted"`
}

// Pool is what inspect found in one location.
type Pool struct {
	Location
	Entries []Entry   `json:"entries"`
	Images  []string  `json:"images"` // every image or subvolume named like ours
	Trash   []Trashed `json:"trash,omitempty"`
	// Errors are what could not be read; the report is partial there.
	Errors []string `json:"errors,omitempty"`
}

// Orphan is one disagreement.
type Orphan struct {
	Kind string `json:"kind"`
	Location
	// Name is what is orphaned: an image, subvolume, journal name, PV,
	// VolumeSnapshotContent or snapshot (image@snapshot).
	Name   string    `json:"name"`
	UUID   string    `json:"uuid,omitempty"`
	Handle string    `json:"handle,omitempty"`
	Detail string    `json:"detail"`
	Ours   bool      `json:"ours"`
	Since  time.Time `json:"since,omitempty"` // when it was last changed, as far as known
	// Collect says whether gc removes it; Why says why not.
	Collect bool   `json:"collect"`
	Why     string `json:"why,omitempty"`

	remove func() error
}

// Removed is what gc did with one orphan.
type Removed struct {
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Where string `json:"where"`
	Error string `json:"error,omitempty"`
}

// Report is the whole result.
type Report struct {
	// Kubernetes says whether PVs, PVCs and VolumeSnapshotContents were
	// read; without them the orphans that need them are not looked for.
	Kubernetes bool      `json:"kubernetes"`
	Grace      string    `json:"grace"`
	Pools      []*Pool   `json:"pools"`
	Orphans    []*Orphan `json:"orphans"`
	// Errors are failures outside one location (config.json, Kubernetes).
	Errors []string `json:"errors,omitempty"`
	// DryRun is set by gc without --yes: Removed lists what would go.
	DryRun  bool      `json:"dryRun,omitempty"`
	Removed []Removed `json:"removed,omitempty"`
}

func (r *Report) sort() {
	sort.SliceStable(r.Orphans, func(i, j int) bool {
		a, b := r.Orphans[i], r.Orphans[j]
		if a.String() != b.String() {
			return a.String() < b.String()
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Name < b.Name
	})
}

// WriteJSON prints the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// WriteTable prints the report for a person.
func (r *Report) WriteTable(w io.Writer, now time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, p := range r.Pools {
		fmt.Fprintf(tw, "== %s\n", p.Location)
		for _, e := range p.Errors {
			fmt.Fprintf(tw, "   error: %s\n", e)
		}
		if len(p.Entries) == 0 {
			fmt.Fprintln(tw, "   no journal entries")
		} else {
			fmt.Fprintln(tw, "KIND\tNAME\tIMAGE\tON CEPH\tJOURNAL\tKUBERNETES\tAGE")
			for _, e := range p.Entries {
				onCeph := yesNo(e.Exists)
				if e.Temp {
					onCeph += " (+temp)"
				}
				if e.Kind == "snapshot" && e.Exists && !e.Complete && p.Driver == "rbd" {
					onCeph += " (no restore snapshot)"
				}
				journal := "ok"
				if !e.Linked {
					journal = "no directory key"
				}
				k8s := "-"
				switch {
				case e.PV != "":
					k8s = "pv/" + e.PV + " " + e.PVPhase
					if e.Claim != "" {
						k8s += " pvc/" + e.Claim
					}
				case e.Content != "":
					k8s = "vsc/" + e.Content
					if e.SnapshotRef != "" {
						k8s += " vs/" + e.SnapshotRef
					}
				case r.Kubernetes:
					k8s = "none"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Kind, dash(e.RequestName), e.Image, onCeph, journal, k8s, age(e.Modified, now))
			}
		}
		ours := 0
		for _, t := range p.Trash {
			if t.Ours {
				ours++
			}
		}
		if p.Driver == "rbd" {
			fmt.Fprintf(tw, "   images named like ours: %d; trash: %d entries, %d of them ours\n", len(p.Images), len(p.Trash), ours)
			for _, t := range p.Trash {
				children := fmt.Sprint(t.Children)
				if t.Children < 0 {
					children = "unknown"
				}
				fmt.Fprintf(tw, "   trash\t%s\t%s\tours: %s\tclones: %s\t%s\n", t.ID, t.Name, yesNo(t.Ours), children, age(t.Deleted, now))
			}
		} else {
			fmt.Fprintf(tw, "   subvolumes named like ours: %d\n", len(p.Images))
		}
		fmt.Fprintln(tw)
	}
	if !r.Kubernetes {
		fmt.Fprintln(tw, "Kubernetes not read (no --kubeconfig): volumes and snapshots without PV or content are not looked for.")
	}
	for _, e := range r.Errors {
		fmt.Fprintf(tw, "error: %s\n", e)
	}
	if len(r.Orphans) == 0 {
		fmt.Fprintln(tw, "No orphans.")
	} else {
		fmt.Fprintf(tw, "ORPHANS (grace %s)\n", r.Grace)
		fmt.Fprintln(tw, "KIND\tWHERE\tNAME\tOURS\tAGE\tGC\tDETAIL")
		for _, o := range r.Orphans {
			gc := "removes"
			if !o.Collect {
				gc = "keeps: " + o.Why
			}
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n", o.Kind, o.ClusterID, o.Pool, o.Name, yesNo(o.Ours), age(o.Since, now), gc, o.Detail)
		}
	}
	if r.Removed != nil || r.DryRun {
		fmt.Fprintln(tw)
		verb := "REMOVED"
		if r.DryRun {
			verb = "WOULD REMOVE (dry run; --yes removes)"
		}
		fmt.Fprintf(tw, "%s: %d\n", verb, len(r.Removed))
		for _, d := range r.Removed {
			res := "ok"
			if d.Error != "" {
				res = "failed: " + d.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Kind, d.Where, d.Name, res)
		}
	}
	return tw.Flush()
}
