package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A kernel whose pool directories lie under /tmp cannot, before a restart,
// move the directories leading to them aside and leave a symlink out of
// the sandbox in their place: the restart's bwrap would follow it while it
// makes its mount points, and create directories on the host, owned by the
// kernel's uid. The gateway makes those directories itself, root's, in the
// kernel's sticky /tmp, where the kernel can neither move nor replace them.
func TestBwrapRestartCannotMountOutside(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	run, work := newDirs(t)
	if !strings.HasPrefix(run, "/tmp/") {
		t.Skipf("the test's directories (%s) are not under /tmp", run)
	}
	top := "/tmp/" + strings.Split(strings.TrimPrefix(run, "/tmp/"), "/")[0]
	// A host directory the kernel's uid could write in, as /var/tmp is.
	target := "/var/tmp/cellgate-escape-" + filepath.Base(t.TempDir())
	if err := os.Mkdir(target, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(target, 0o1777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(target) })
	req := Request{RuntimeDir: run, WorkDir: work, Env: []string{"TOP=" + top, "TARGET=" + target}}
	req.Argv = []string{"/usr/bin/python3", "-c", `
import os
top, target = os.environ["TOP"], os.environ["TARGET"]
for what, act in (("rename", lambda: os.rename(top, top + ".aside")), ("rmdir", lambda: os.rmdir(top))):
    try:
        act()
        print(what, "done", flush=True)
        break
    except OSError as e:
        print(what, "refused", e.errno, flush=True)
try:
    os.symlink("/oldroot" + target, top)
    print("symlink done", flush=True)
except OSError as e:
    print("symlink refused", e.errno, flush=True)
print("uid", os.getuid(), flush=True)
`}
	k1 := launchIn(t, b, req)
	uid := uidOf(t, k1)
	if err := k1.wait(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("first kernel: %s", k1.out.String())
	if strings.Contains(k1.out.String(), "symlink done") || strings.Contains(k1.out.String(), "rename done") {
		t.Errorf("the kernel replaced the directories leading to its pool directories:\n%s", k1.out.String())
	}
	// The restart.
	req.Argv = []string{"/usr/bin/python3", "-c", `print("second kernel", flush=True)`}
	k2 := launchIn(t, b, req)
	if err := k2.wait(t, 30*time.Second); err != nil {
		t.Fatalf("restart: %v\n%s", err, k2.out.String())
	}
	if !strings.Contains(k2.out.String(), "second kernel") {
		t.Errorf("restarted kernel did not run:\n%s", k2.out.String())
	}
	if entries, _ := os.ReadDir(target); len(entries) > 0 {
		owner := -1
		if st, err := os.Lstat(filepath.Join(target, entries[0].Name())); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				owner = int(sys.Uid)
			}
		}
		t.Fatalf("the restart created %s/%s on the host (owner %d, the kernel's uid %d)", target, entries[0].Name(), owner, uid)
	}
	_ = k2.p.Close()
}
