package mapper

import (
	"errors"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestThreadKeyringRemoveDropsTheKey: after Remove, a key can no longer be
// read or found. (This host has no "ceph" key type without libceph; Remove
// does not depend on the type, so a "user" key stands in.)
func TestThreadKeyringRemoveDropsTheKey(t *testing.T) {
	runtime.LockOSThread() // the thread keyring is per thread; this one ends with the test
	serial, err := unix.AddKey("user", "cephcsi-unit-test", []byte("not a real key"), unix.KEY_SPEC_THREAD_KEYRING)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skipf("no kernel keyring here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := (ThreadKeyring{}).Remove(serial); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	buf := make([]byte, 64)
	if _, err := unix.KeyctlBuffer(unix.KEYCTL_READ, serial, buf, 0); err == nil {
		t.Fatal("the key can still be read after Remove")
	}
	if _, err := unix.KeyctlSearch(unix.KEY_SPEC_THREAD_KEYRING, "user", "cephcsi-unit-test", 0); err == nil {
		t.Fatal("the key is still found in the thread keyring after Remove")
	}
}
