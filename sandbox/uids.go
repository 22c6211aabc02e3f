package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoUID is returned by Launch when every kernel uid is in use.
var ErrNoUID = errors.New("sandbox: all kernel uids are in use")

// uidPool hands out the kernel uids. A uid is ours while we hold an flock
// on its lock file in the state dir: gateways (and test binaries) sharing a
// host coordinate through it, and a uid whose lock nobody holds has no live
// kernel, whatever processes or mounts a crash left behind.
//
// A uid this pool put back clean (nothing of it left running or mounted)
// is handed out clean again if nobody has held it since: the pool writes
// a token of its own into the lock file as it puts the uid back, and finds
// it there unchanged. Anyone else who locks the uid meanwhile (another
// gateway, which may crash with the uid's processes left) rewrites the
// file. A clean uid needs no sweep of every process on the host before
// its next kernel, which costs each start more the more kernels run: so
// the pool hands out the uids it put back clean first, the longest rested
// first, and goes round the rest of the range (rather than reusing the
// lowest free uid) only when none is left. Going round, every uid needed
// a sweep until the whole range had been used once: a quarter of the
// gateway's CPU in a burst of forked starts.
type uidPool struct {
	dir   string // lock files
	base  int
	n     int
	nonce string // this pool's, in its tokens

	mu     sync.Mutex
	next   int              // offset of the next uid to try
	held   map[int]*os.File // the locks we hold
	tokens int              // tokens written so far
	clean  map[int]string   // the token each uid was put back clean with
	rested []int            // the uids in clean, in the order they were put back
}

func newUIDPool(dir string, base, n int) *uidPool {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	return &uidPool{dir: dir, base: base, n: n, nonce: hex.EncodeToString(nonce),
		held: make(map[int]*os.File), clean: make(map[int]string)}
}

// get locks a free uid, and says whether it is clean: put back clean by
// this pool, and held by nobody since.
func (u *uidPool) get() (uid int, clean bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for len(u.rested) > 0 {
		uid := u.rested[0]
		u.rested = u.rested[1:]
		if _, ok := u.clean[uid]; !ok || u.held[uid] != nil {
			continue // handed out since by the round below
		}
		f, err := u.tryLock(uid)
		if err != nil {
			return 0, false, err
		}
		if f != nil {
			return uid, u.take(uid, f), nil
		}
		delete(u.clean, uid) // another holder has it: no longer clean
	}
	for i := 0; i < u.n; i++ {
		uid := u.base + (u.next+i)%u.n
		if u.held[uid] != nil {
			continue
		}
		f, err := u.tryLock(uid)
		if err != nil {
			return 0, false, err
		}
		if f == nil {
			continue
		}
		u.next = (uid - u.base + 1) % u.n
		return uid, u.take(uid, f), nil
	}
	return 0, false, fmt.Errorf("%w (%d..%d)", ErrNoUID, u.base, u.base+u.n-1)
}

// take records uid as held through its lock f, and says whether it is
// still as clean as this pool put it back.
func (u *uidPool) take(uid int, f *os.File) (clean bool) {
	u.held[uid] = f
	token, ok := u.clean[uid]
	delete(u.clean, uid)
	if ok {
		buf := make([]byte, len(token)+1)
		n, _ := f.ReadAt(buf, 0)
		clean = string(buf[:n]) == token
	}
	// Whatever this holder leaves (if it crashes) is not clean.
	_ = f.Truncate(0)
	return clean
}

// put unlocks uid; clean says that nothing of it is left running or
// mounted.
func (u *uidPool) put(uid int, clean bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := u.held[uid]
	if f == nil {
		return
	}
	if clean {
		u.tokens++
		token := fmt.Sprintf("clean %s %d\n", u.nonce, u.tokens)
		if _, err := f.WriteAt([]byte(token), 0); err == nil {
			u.clean[uid] = token
			u.rested = append(u.rested, uid)
		}
	}
	f.Close()
	delete(u.held, uid)
}

// tryLock returns the locked lock file of uid, or nil if someone else holds
// it. flock locks belong to the open file, so two pools in one process
// exclude each other too.
func (u *uidPool) tryLock(uid int) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(u.dir, "uid-"+strconv.Itoa(uid)+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("kernel uid lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("kernel uid lock: %w", err)
	}
	return f, nil
}

// procUIDs maps the real uid of each live process within [lo, hi) to its
// pids. It reads /proc/PID/status rather than the owner of /proc/PID, which
// is root for processes that are not dumpable. Zombies are dead and left
// out: an orphaned sandbox init waits for the host's pid 1 to reap it,
// which may take seconds. A zombie leader whose other threads still run is
// alive (Threads > 1).
func procUIDs(lo, hi int) (map[int][]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	found := make(map[int][]int)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue // exited meanwhile
		}
		_, rest, ok := bytes.Cut(data, []byte("\nUid:\t"))
		if !ok {
			continue
		}
		if zombie(data) {
			continue
		}
		real, _, _ := bytes.Cut(rest, []byte("\t"))
		uid, err := strconv.Atoi(string(real))
		if err == nil && uid >= lo && uid < hi {
			found[uid] = append(found[uid], pid)
		}
	}
	return found, nil
}

// zombie tells from a /proc/PID/status whether the process is dead: a
// zombie (or dying) leader without other threads.
func zombie(status []byte) bool {
	_, state, _ := bytes.Cut(status, []byte("\nState:\t"))
	if len(state) == 0 || (state[0] != 'Z' && state[0] != 'X') {
		return false
	}
	_, threads, _ := bytes.Cut(status, []byte("\nThreads:\t"))
	return bytes.HasPrefix(threads, []byte("1\n"))
}

// sweepUID kills every process running as uid and waits until none is
// left. kill(-1) from a process of that uid reaches exactly the processes
// the uid may signal, which is that uid's, even in nested pid namespaces
// and after setsid, without racing pid reuse as a kill by pid would.
func sweepUID(ctx context.Context, killPath string, uid int) error {
	for attempt := 0; ; attempt++ {
		left, err := procUIDs(uid, uid+1)
		if err != nil {
			return err
		}
		if len(left[uid]) == 0 {
			return nil
		}
		if attempt > 0 {
			// The SIGKILLed ones need a moment to be reaped.
			select {
			case <-ctx.Done():
				return fmt.Errorf("processes %v of uid %d survive: %w", left[uid], uid, ctx.Err())
			case <-time.After(time.Duration(min(attempt, 20)) * 5 * time.Millisecond):
			}
		}
		cmd := exec.Command(killPath, "-s", "KILL", "--", "-1")
		cmd.Dir = "/"
		cmd.Env = []string{}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}},
		}
		// kill exits 1 when it found nothing to kill: not an error here.
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return fmt.Errorf("sweep processes of uid %d: %w", uid, err)
			}
		}
	}
}

// idRangeConflicts lists the entries of the account databases whose ids
// fall in [lo, hi), and the subordinate id ranges that overlap it: whoever
// owns those could act as a kernel uid (a subuid owner through
// newuidmap), so the range must be free of them.
func idRangeConflicts(lo, hi int) []string {
	var out []string
	for _, db := range []struct {
		path  string
		field int
	}{{"/etc/passwd", 2}, {"/etc/group", 2}} {
		eachLine(db.path, func(f []string) {
			if len(f) > db.field {
				if id, err := strconv.Atoi(f[db.field]); err == nil && id >= lo && id < hi {
					out = append(out, fmt.Sprintf("%s: %s has id %d", db.path, f[0], id))
				}
			}
		})
	}
	for _, path := range []string{"/etc/subuid", "/etc/subgid"} {
		eachLine(path, func(f []string) {
			if len(f) < 3 {
				return
			}
			start, err1 := strconv.Atoi(f[1])
			count, err2 := strconv.Atoi(f[2])
			if err1 == nil && err2 == nil && start < hi && start+count > lo {
				out = append(out, fmt.Sprintf("%s: %s owns %d..%d", path, f[0], start, start+count-1))
			}
		})
	}
	return out
}

// eachLine calls fn with the colon-separated fields of each line of path;
// a missing file has no lines.
func eachLine(path string, fn func([]string)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := s.Text(); line != "" && !strings.HasPrefix(line, "#") {
			fn(strings.Split(line, ":"))
		}
	}
}
