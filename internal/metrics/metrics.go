// Package metrics is how the driver's packages report what they measure:
// the steps of controller calls, connections to Ceph, and the node's maps
// and mounts. The calls here cost an atomic load and nothing else until
// the driver installs a Recorder (the Prometheus exporter in
// internal/metrics/prom, with --enablegrpcmetrics), so packages and their
// unit tests need no Prometheus.
package metrics

import (
	"sync/atomic"
	"time"
)

// The drivers, as the driver label of every series names them.
const (
	RBD    = "rbd"
	CephFS = "cephfs"
)

// The steps of controller calls that are timed. The set is fixed, so label
// cardinality stays bounded.
const (
	StepJournalLookup  = "journal_lookup"  // a request name looked up in the journal
	StepJournalReserve = "journal_reserve" // a new journal entry
	StepJournalRelease = "journal_release" // a journal entry removed
	StepCreate         = "create"          // an empty RBD image or CephFS subvolume made
	StepClone          = "clone"           // a volume made from a snapshot or another volume
	StepSnapshot       = "snapshot"        // a snapshot taken
	StepFlattenQueue   = "flatten_queue"   // a background flatten asked of the Ceph manager
	StepRemove         = "remove"          // a volume's or snapshot's Ceph objects removed
)

// JournalStep is the step a journal claim counts as: a reservation when
// it made a new entry (fresh), a lookup when it found the name's entry.
func JournalStep(fresh bool) string {
	if fresh {
		return StepJournalReserve
	}
	return StepJournalLookup
}

// Steps lists the steps each driver times, for the exporter to show every
// series from the start (a rate over a series that appears only with its
// first event misses that event).
var Steps = map[string][]string{
	RBD: {StepJournalLookup, StepJournalReserve, StepJournalRelease, StepCreate, StepClone, StepSnapshot,
		StepFlattenQueue, StepRemove},
	CephFS: {StepJournalLookup, StepJournalReserve, StepJournalRelease, StepCreate, StepClone, StepSnapshot, StepRemove},
}

// The node operations that are counted.
const (
	OpMap     = "map"
	OpUnmap   = "unmap"
	OpMount   = "mount"
	OpUnmount = "unmount"
)

// NodeOps lists, per driver, the mechanisms (mapper kinds, CephFS clients
// and "fs" for the filesystem on an RBD device) and the operations each
// one does.
var NodeOps = map[string]map[string][]string{
	RBD: {"krbd": {OpMap, OpUnmap}, "rbd-nbd": {OpMap, OpUnmap}, "rbd-fuse": {OpMap, OpUnmap},
		"fs": {OpMount, OpUnmount}},
	CephFS: {"kernel": {OpMount}, "fuse": {OpMount}, "any": {OpUnmount}},
}

// Recorder receives the measurements.
type Recorder interface {
	// Step is one step of a controller call of driver.
	Step(driver, step string, took time.Duration, failed bool)
	// Connect is one new connection to a Ceph cluster (cache misses only).
	Connect(took time.Duration, failed bool)
	// Node is one map, unmap, mount or unmount on the node.
	Node(driver, mechanism, op string, took time.Duration, failed bool)
}

type holder struct{ r Recorder }

var current atomic.Pointer[holder]

// Set installs r (nil for none) and returns a function that puts back the
// one before.
func Set(r Recorder) (restore func()) {
	var h *holder
	if r != nil {
		h = &holder{r}
	}
	old := current.Swap(h)
	return func() { current.Store(old) }
}

// Step records a controller step that began at start and ended with err,
// and returns err, so that a call site can wrap the step's result.
func Step(driver, step string, start time.Time, err error) error {
	if h := current.Load(); h != nil {
		h.r.Step(driver, step, time.Since(start), err != nil)
	}
	return err
}

// Connect records a connection attempt that began at start.
func Connect(start time.Time, err error) {
	if h := current.Load(); h != nil {
		h.r.Connect(time.Since(start), err != nil)
	}
}

// Node records a node operation that began at start, and returns err.
func Node(driver, mechanism, op string, start time.Time, err error) error {
	if h := current.Load(); h != nil {
		h.r.Node(driver, mechanism, op, time.Since(start), err != nil)
	}
	return err
}
