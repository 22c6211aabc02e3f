package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestUIDPoolCleanFirst: the uids put back clean are handed out again
// first, the longest rested first, so that a burst of kernels is not a
// sweep of every process on the host each; the rest of the range is gone
// round only when none is left.
func TestUIDPoolCleanFirst(t *testing.T) {
	const base = 73100
	u := newUIDPool(t.TempDir(), base, 4)
	get := func(wantUID int, wantClean bool) {
		t.Helper()
		uid, clean, err := u.get()
		if err != nil || uid != wantUID || clean != wantClean {
			t.Fatalf("get: uid %d clean %v (%v), want uid %d clean %v", uid, clean, err, wantUID, wantClean)
		}
	}
	get(base, false)
	get(base+1, false)
	u.put(base, true)
	get(base, true)
	u.put(base+1, true)
	u.put(base, true)
	get(base+1, true)
	get(base, true)
	get(base+2, false)
	u.put(base+2, false)
	get(base+3, false)
	get(base+2, false)
	if _, _, err := u.get(); err == nil {
		t.Fatal("a fifth uid from a range of four")
	}
}

// TestUIDPoolClean: a uid this pool put back clean comes back clean; one
// put back unclean, or locked by another holder since (who may have
// crashed with its processes left), does not, and so is swept before its
// next kernel.
func TestUIDPoolClean(t *testing.T) {
	dir := t.TempDir()
	const base = 73000
	ours, theirs := newUIDPool(dir, base, 1), newUIDPool(dir, base, 1)
	get := func(u *uidPool) bool {
		t.Helper()
		uid, clean, err := u.get()
		if err != nil || uid != base {
			t.Fatalf("get: %d, %v", uid, err)
		}
		return clean
	}
	if get(ours) {
		t.Fatal("a uid never put back was handed out clean")
	}
	ours.put(base, true)
	if !get(ours) {
		t.Fatal("a uid put back clean by this pool, held by nobody since, was not handed out clean")
	}
	ours.put(base, false)
	if get(ours) {
		t.Fatal("a uid put back unclean was handed out clean")
	}
	ours.put(base, true)
	// Another gateway takes it and crashes: its lock goes, its processes
	// may stay.
	get(theirs)
	theirs.held[base].Close()
	delete(theirs.held, base)
	if get(ours) {
		t.Fatal("a uid another holder locked since was handed out clean")
	}
	ours.put(base, true)
	// A token written by hand (or by an older gateway) is not this pool's.
	data, err := os.ReadFile(filepath.Join(dir, "uid-"+strconv.Itoa(base)+".lock"))
	if err != nil || len(data) == 0 {
		t.Fatalf("lock file: %q, %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "uid-"+strconv.Itoa(base)+".lock"), append(data[:len(data)-2], 'x', '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if get(ours) {
		t.Fatal("a uid whose lock file holds another token was handed out clean")
	}
}

// TestUIDGoesBackClean: a kernel that ended with a daemon of its uid still
// running has it swept, and its uid goes back clean (no sweep before the
// uid's next kernel); a kernel whose slot could not be unmounted would not.
func TestUIDGoesBackClean(t *testing.T) {
	b := newBwrap(t, nil)
	defer b.Close()
	k := launchPy(t, b, `import os, subprocess
subprocess.Popen(["sleep", "600"], start_new_session=True)
print("daemon started", flush=True)`)
	if err := k.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("kernel: %v\n%s", err, k.out)
	}
	b.mu.Lock()
	uid := -1
	for _, sl := range b.slots {
		if sl.owner == k.p {
			uid = sl.uid
		}
	}
	b.mu.Unlock()
	if uid < 0 {
		t.Fatal("no slot for the kernel")
	}
	if err := k.p.Close(); err != nil {
		t.Fatal(err)
	}
	left, err := procUIDs(uid, uid+1)
	if err != nil || len(left[uid]) > 0 {
		t.Fatalf("processes of uid %d left: %v, %v", uid, left[uid], err)
	}
	b.uids.mu.Lock()
	_, clean := b.uids.clean[uid]
	b.uids.mu.Unlock()
	if !clean {
		t.Fatalf("uid %d did not go back clean", uid)
	}
}
