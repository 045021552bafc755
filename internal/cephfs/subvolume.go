package cephfs

// Subvolume operations on an open filesystem (fsConn), for the
// controller's calls.

// createSubvolume makes an empty subvolume with a quota, creating the

// removeSnapshot removes a subvolume snapshot; a missing one is fine. One

// removeSubvolume removes a subvolume, keeping its snapshots (the subvolume
