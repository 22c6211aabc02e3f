package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors that tell why a sandboxed kernel ended (see Process.Err).
var (
	// ErrCPULimit: the kernel used up Config.CPUTime.
	ErrCPULimit = errors.New("kernel exceeded its CPU time limit")
	// ErrLifespan: the kernel outlived Config.Lifespan and was killed.
	ErrLifespan = errors.New("kernel exceeded its lifespan")
	// ErrBusy: Launch was asked to reuse the directories of a kernel that
	// still runs.
	ErrBusy = errors.New("sandbox: directories in use by a running kernel")
)

// Bwrap starts each kernel in a bubblewrap sandbox under a uid of its own;
// see the package comment for what the sandbox allows. It is safe for
// concurrent use.
type Bwrap struct {
	cfg    Config
	tag    string   // source of our tmpfs mounts, to find them after a crash
	roArgs []string // bwrap arguments for cfg.ReadOnly, resolved once
	filter []byte   // seccomp program, nil where we have none
	uids   *uidPool

	mu        sync.Mutex
	slots     map[string]*slot     // by WorkDir
	templates map[string]*template // by interpreter and roots
	retired   map[*template]bool   // replaced, serving their last kernels
	forkErr   error                // the last time the fork server failed
	// cannotFork says why Config.Fork cannot be had here (a tool is
	// missing): kernels start cold. Set by NewBwrap only.
	cannotFork error
	// forkFailing is the failure of the latest fork, nil once one
	// succeeds again: what KernelStarts tells.
	forkFailing error

	// starting holds, per template key, a lock held while its template is
	// chosen or starts.
	starting map[string]*sync.Mutex
	// checkEvery is how often a template's imported files are compared
	// with the disk, at most (tests set 0: at every fork).
	checkEvery time.Duration

	// cgroups is where kernels' cgroups are made, and which limits they
	// hold (cgroup.go); nil or empty: the accountant holds them all.
	cgroups *cgroupHost
	// launches numbers kernels' cgroups.
	launches atomic.Uint64
}

// slot is the storage and uid of one kernel's directories. It outlives a
// kernel process when the pool restarts the kernel in the same directories:
// the new process takes over the uid and the files.
type slot struct {
	uid       int
	scratch   *scratch
	launching bool
	owner     *Process // the latest process started in it
	released  bool     // the uid may already be someone else's
	// swept: the latest process's end found nothing of the uid left
	// running (sweepUID); the uid goes back clean if it is unmounted too.
	swept atomic.Bool
}

// NewBwrap checks that the sandbox can work here: root, the binaries, a
// uid range free of accounts, and a trial sandbox run end to end. It also
// clears what a crashed predecessor left behind (mounts, processes).
func NewBwrap(cfg Config) (*Bwrap, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("sandbox bwrap: the gateway must run as root, to start kernels under their own uids and mount their tmpfs (use --sandbox none for development without root)")
	}
	for _, p := range []string{cfg.BwrapPath, cfg.PrlimitPath, cfg.ChoomPath, cfg.KillPath} {
		if err := unix.Access(p, unix.X_OK); err != nil {
			return nil, fmt.Errorf("sandbox bwrap: %s: %w (make deps installs bubblewrap and util-linux)", p, err)
		}
	}
	if st, err := os.Stat(cfg.BwrapPath); err == nil && st.Mode()&os.ModeSetuid != 0 {
		return nil, fmt.Errorf("sandbox bwrap: %s is setuid; cellgate expects the unprivileged bubblewrap Debian ships", cfg.BwrapPath)
	}
	lo, hi := cfg.UIDBase, cfg.UIDBase+cfg.UIDCount
	if c := idRangeConflicts(lo, hi); len(c) > 0 {
		return nil, fmt.Errorf("sandbox bwrap: kernel uid range %d..%d is not free (choose another UIDBase, or see scripts/sandbox-setup.sh): %s", lo, hi-1, strings.Join(c, "; "))
	}
	if c := idRangeConflicts(cfg.ForkUID, cfg.ForkUID+1); cfg.Fork && len(c) > 0 {
		return nil, fmt.Errorf("sandbox bwrap: fork-server uid %d is not free (choose another ForkUID): %s", cfg.ForkUID, strings.Join(c, "; "))
	}
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("sandbox bwrap: state dir: %w", err)
	}
	// bwrap, running as a kernel's uid, must reach the kernel's tmpfs
	// below: search permission, nothing more. The uid locks live here
	// too, root's alone.
	if err := os.Chmod(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("sandbox bwrap: state dir: %w", err)
	}
	if st, err := os.Lstat(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("sandbox bwrap: state dir: %w", err)
	} else if sys, ok := st.Sys().(*syscall.Stat_t); !st.IsDir() || !ok || sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("sandbox bwrap: state dir %s must be a directory owned by root and writable by root only", cfg.StateDir)
	}
	b := &Bwrap{
		cfg:        cfg,
		tag:        "cellgate-sandbox:" + cfg.StateDir,
		uids:       newUIDPool(cfg.StateDir, cfg.UIDBase, cfg.UIDCount),
		slots:      make(map[string]*slot),
		templates:  make(map[string]*template),
		retired:    make(map[*template]bool),
		starting:   make(map[string]*sync.Mutex),
		filter:     seccompFilter(),
		checkEvery: time.Second,
	}
	if cfg.Fork {
		// Without a forked kernel's pid 1, kernels start cold: slower,
		// as safe.
		for _, p := range []string{cfg.SetprivPath, cfg.CatatonitPath} {
			if err := unix.Access(p, unix.X_OK); err != nil {
				b.cannotFork = fmt.Errorf("%s: %w (make deps installs util-linux and catatonit)", p, err)
			}
		}
	}
	if err := b.sweep(); err != nil {
		return nil, fmt.Errorf("sandbox bwrap: clean up after a previous run: %w", err)
	}
	b.cgroups = findCgroups()
	b.sweepCgroups()
	roArgs, err := readOnlyArgs(cfg.ReadOnly)
	if err != nil {
		return nil, fmt.Errorf("sandbox bwrap: %w", err)
	}
	b.roArgs = roArgs
	if err := b.probe(); err != nil {
		return nil, fmt.Errorf("sandbox bwrap: trial run failed (user namespaces must be allowed for unprivileged users: sysctl kernel.unprivileged_userns_clone=1 where it exists, user.max_user_namespaces > 0; scripts/sandbox-setup.sh checks): %w", err)
	}
	return b, nil
}

// Name implements Launcher.
func (b *Bwrap) Name() string { return "bwrap" }

// Config returns the configuration in force.
func (b *Bwrap) Config() Config { return b.cfg }

// Describe says in one line how kernels are confined, for the startup log.
func (b *Bwrap) Describe() string {
	c := b.cfg
	filter := "seccomp filter (denylist; sockets of unix, inet, inet6, netlink route only)"
	if b.filter == nil {
		filter = "no seccomp filter on " + runtime.GOARCH
	}
	fork := "ipykernel kernels start cold"
	if c.Fork {
		kinds := "ipykernel kernels"
		if len(c.ForkSagePreload) > 0 {
			kinds = "ipykernel and Sage kernels"
		}
		fork = fmt.Sprintf("%s forked from a template (uid %d; replaced after %d kernels or when what it imported changes on disk)", kinds, c.ForkUID, c.ForkMax)
		if b.cannotFork != nil {
			fork = "ipykernel kernels start cold: cannot fork: " + b.cannotFork.Error()
		}
		b.mu.Lock()
		if b.forkErr != nil {
			fork += "; last fork failure, kernel started cold: " + b.forkErr.Error()
		}
		b.mu.Unlock()
	}
	return fmt.Sprintf("bwrap: uids %d..%d; %s; per process: cpu %v, address space %s, files %d, file size %s; per kernel: tmpfs %s/%d inodes, lifespan %v; per kernel, whole process tree: %s; %s",
		c.UIDBase, c.UIDBase+c.UIDCount-1, filter, c.CPUTime, mib(c.Memory), c.OpenFiles, mib(c.FileSize),
		mib(c.Disk), c.Inodes, c.Lifespan, b.cgroups.describe(&c), fork)
}

// forkDone records how the latest fork went (failure nil: it worked),
// and tells Config.OnForkState when that changes whether kernels fork.
func (b *Bwrap) forkDone(failure error) {
	b.mu.Lock()
	changed := (failure == nil) != (b.forkFailing == nil)
	if failure != nil {
		b.forkErr = failure
	}
	b.forkFailing = failure
	b.mu.Unlock()
	if changed && b.cfg.OnForkState != nil {
		b.cfg.OnForkState(failure)
	}
}

// KernelStarts says in a few words how ipykernel and Sage kernels start
// now, for /readyz: forked from a template, or cold and why (forking off,
// or the latest fork failed: the template could not be built or died).
func (b *Bwrap) KernelStarts() string {
	if !b.cfg.Fork {
		return "cold: forking is off"
	}
	if b.cannotFork != nil {
		return "cold: cannot fork: " + b.cannotFork.Error()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.forkFailing != nil {
		return "cold: the latest fork failed: " + b.forkFailing.Error()
	}
	return "forked from templates"
}

func mib(n int64) string { return fmt.Sprintf("%dMiB", n>>20) }

// sweep clears what crashed gateways left: mounts (kernel tmpfs and their
// binds over pool directories) and processes of kernel uids whose lock
// nobody holds any more. Normally there are none: bwrap dies with its
// parent, but mounts outlive a crash.
func (b *Bwrap) sweep() error {
	mounts, err := listMounts(b.tag)
	if err != nil {
		return err
	}
	procs, err := procUIDs(b.cfg.UIDBase, b.cfg.UIDBase+b.cfg.UIDCount)
	if err != nil {
		return err
	}
	suspects := make(map[int]bool)
	for uid := range procs {
		suspects[uid] = true
	}
	owned := make(map[string]bool) // devs of scratch mounts, stale or not
	for _, m := range mounts {
		if uid, ok := b.scratchUID(m.target); ok {
			suspects[uid] = true
			owned[m.dev] = true
		}
	}
	var errs []error
	for uid := range suspects {
		if uid < b.cfg.UIDBase || uid >= b.cfg.UIDBase+b.cfg.UIDCount {
			continue // another range's scratch in the same state dir
		}
		f, err := b.uids.tryLock(uid)
		if err != nil {
			return err
		}
		if f == nil {
			continue // a live kernel of another gateway
		}
		errs = append(errs, b.clearStale(uid, mounts))
		f.Close()
	}
	// Binds whose tmpfs is no longer mounted at all.
	orphans := make(map[string]bool)
	for _, m := range mounts {
		if !owned[m.dev] {
			orphans[m.dev] = true
		}
	}
	errs = append(errs, unmountDevs(mounts, orphans))
	return errors.Join(errs...)
}

// scratchUID tells whether path is a kernel tmpfs mount point, and whose.
func (b *Bwrap) scratchUID(path string) (int, bool) {
	name, ok := strings.CutPrefix(path, b.cfg.StateDir+"/k")
	if !ok {
		return 0, false
	}
	uid, err := strconv.Atoi(name)
	return uid, err == nil
}

// clearStale removes what an earlier holder of uid left behind: processes,
// the tmpfs and its binds. The caller holds uid's lock, so none of it
// belongs to a live kernel. mounts may be nil: clearStale reads them.
func (b *Bwrap) clearStale(uid int, mounts []mountEntry) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sweepUID(ctx, b.cfg.KillPath, uid); err != nil {
		return err
	}
	dir := filepath.Join(b.cfg.StateDir, "k"+strconv.Itoa(uid))
	if mounts == nil {
		var err error
		if mounts, err = listMounts(b.tag); err != nil {
			return err
		}
	}
	devs := make(map[string]bool)
	for _, m := range mounts {
		if m.target == dir {
			devs[m.dev] = true
		}
	}
	if err := unmountDevs(mounts, devs); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", dir, err)
	}
	return nil
}

// probe runs /bin/true through the whole launch path, so that a host where
// the sandbox cannot work fails at startup, with bwrap's own message.
func (b *Bwrap) probe() error {
	dir, err := os.MkdirTemp(b.cfg.StateDir, "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	req := Request{
		Argv:       []string{"/usr/bin/true"},
		WorkDir:    filepath.Join(dir, "work"),
		RuntimeDir: filepath.Join(dir, "run"),
	}
	for _, d := range []string{req.WorkDir, req.RuntimeDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
	}
	var out bytes.Buffer
	req.Output = &out
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := b.Launch(ctx, req)
	if err != nil {
		return err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
	}
	cerr := p.Close()
	if err := p.Err(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	return cerr
}

// Launch implements Launcher. WorkDir and RuntimeDir must exist; what the
// pool put in them (regular files only) is carried into the kernel's
// tmpfs, which covers them until Close. To restart a kernel, Launch again
// with the same directories once the previous Process is done, without
// closing it: the new kernel keeps the uid and the files. If Launch fails,
// it has undone everything it set up.
func (b *Bwrap) Launch(ctx context.Context, req Request) (*Process, error) {
	if err := checkRequest(req); err != nil {
		return nil, err
	}
	sl, err := b.acquire(req)
	if err != nil {
		return nil, err
	}
	// The kernel's own cgroup, its limits set before anything of it runs.
	cg, err := b.cgroups.create(kernelCgroupName(sl.uid, req.WorkDir, b.launches.Add(1)))
	if err == nil && cg != nil {
		err = cg.setLimits(&b.cfg)
	}
	var p *Process
	kind, args, forkable := b.forkable(req.Argv)
	if err == nil && forkable && b.cfg.Fork && b.cannotFork == nil {
		if p, err = b.launchForked(ctx, req, sl, kind, args, cg); err != nil {
			// The kernel still starts, cold; Describe tells the operator.
			b.forkDone(err)
			p, err = nil, nil
		} else {
			b.forkDone(nil)
			if err = placeForked(p, cg); err != nil {
				p = nil
			}
		}
	}
	if p == nil && err == nil {
		cold := req
		if forkable {
			cold.Argv = append(slices.Clip(req.Argv), memoryHistory)
		}
		p, err = b.start(ctx, cold, sl, cg)
	}
	b.mu.Lock()
	sl.launching = false
	if err == nil {
		sl.owner = p
	}
	b.mu.Unlock()
	if err != nil {
		// A failed restart loses the old kernel's files too: the pool gives
		// up on a kernel it cannot start, and must not be left with mounts
		// no Process can release.
		return nil, errors.Join(err, cg.remove(), b.releaseSlot(req.WorkDir, sl))
	}
	p.release = func() error { return b.closeSlot(req.WorkDir, sl, p) }
	// Memory, CPUTime and CPUShare for the kernel's whole tree, cold or
	// forked, through its cgroup where it holds them: its goroutine ends
	// with p.
	l := b.cfg.treeLimits()
	l.cg = cg
	go limitTree(p, l)
	return p, nil
}

// memoryHistory keeps an IPython kernel's history database in memory: a
// kernel the fork server could make gets it when it starts cold, as every
// forked kernel keeps its history (forkserver.py, memory_history), so
// that a kernel is the same whether it was forked or not. Its home is a
// tmpfs that ends with it: a history file there cost each start a sqlite
// database and a thread to write it (about 7 ms of a forked kernel's
// CPU), and outlived at most a restart of the kernel.
const memoryHistory = "--HistoryManager.hist_file=:memory:"

// placeForked moves a forked kernel (and its pid 1) into its cgroup
// before Launch returns it: until it is leased, the kernel runs no code of its client's, and
// forks nothing. A kernel that failed at once is returned as it is, done.
func placeForked(p *Process, cg *kernelCgroup) error {
	if cg == nil || isDone(p) {
		return nil
	}
	if err := cg.placeTree(p.Pid()); err != nil && !isDone(p) {
		p.Kill()
		<-p.done
		return fmt.Errorf("launch kernel: %w", err)
	}
	return nil
}

func checkRequest(req Request) error {
	if len(req.Argv) == 0 {
		return errors.New("launch kernel: empty command")
	}
	for _, d := range []string{req.WorkDir, req.RuntimeDir} {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/" {
			return fmt.Errorf("launch kernel: directory %q: want a clean absolute path", d)
		}
		st, err := os.Lstat(d)
		if err != nil {
			return fmt.Errorf("launch kernel: %w", err)
		}
		if !st.IsDir() {
			return fmt.Errorf("launch kernel: %s is not a directory", d)
		}
	}
	w, r := req.WorkDir+"/", req.RuntimeDir+"/"
	if strings.HasPrefix(w, r) || strings.HasPrefix(r, w) {
		return fmt.Errorf("launch kernel: WorkDir %s and RuntimeDir %s must not contain each other", req.WorkDir, req.RuntimeDir)
	}
	return nil
}

// acquire returns the slot for req's directories: the one of a finished
// kernel in the same directories (a restart), or a new uid and tmpfs.
func (b *Bwrap) acquire(req Request) (*slot, error) {
	b.mu.Lock()
	if sl := b.slots[req.WorkDir]; sl != nil {
		defer b.mu.Unlock()
		if sl.scratch.runtimeDir != req.RuntimeDir {
			return nil, fmt.Errorf("%w: %s was launched with runtime dir %s, not %s", ErrBusy, req.WorkDir, sl.scratch.runtimeDir, req.RuntimeDir)
		}
		if sl.launching || sl.owner == nil || !isDone(sl.owner) {
			return nil, fmt.Errorf("%w: %s", ErrBusy, req.WorkDir)
		}
		if err := sl.scratch.giveRun(); err != nil {
			return nil, err
		}
		sl.launching = true
		sl.swept.Store(false)
		return sl, nil
	}
	sl := &slot{launching: true}
	b.slots[req.WorkDir] = sl // claims the directories while we mount
	b.mu.Unlock()

	uid, clean, err := b.uids.get()
	if err == nil {
		sl.uid = uid
		if !clean {
			err = b.clearStale(uid, nil)
		}
		if err == nil {
			sl.scratch, err = newScratch(&b.cfg, b.tag, uid, req)
		}
		if err != nil {
			b.uids.put(uid, false)
		}
	}
	if err != nil {
		b.mu.Lock()
		delete(b.slots, req.WorkDir)
		b.mu.Unlock()
		return nil, fmt.Errorf("launch kernel: %w", err)
	}
	return sl, nil
}

// closeSlot releases sl on behalf of p, unless a restart gave it to a newer
// process.
func (b *Bwrap) closeSlot(workDir string, sl *slot, p *Process) error {
	b.mu.Lock()
	mine := sl.owner == p && !sl.launching
	b.mu.Unlock()
	if !mine {
		return nil
	}
	return b.releaseSlot(workDir, sl)
}

func (b *Bwrap) releaseSlot(workDir string, sl *slot) error {
	b.mu.Lock()
	if sl.released {
		b.mu.Unlock()
		return nil
	}
	sl.released = true
	if b.slots[workDir] == sl {
		delete(b.slots, workDir)
	}
	b.mu.Unlock()
	err := sl.scratch.release()
	b.uids.put(sl.uid, err == nil && sl.swept.Load())
	if err != nil {
		return fmt.Errorf("release kernel sandbox: %w", err)
	}
	return nil
}

// run is what the parts of one sandboxed process share.
type run struct {
	cg          *kernelCgroup // nil without one
	lifespanHit atomic.Bool
	cleanupErr  error // written before Done is closed, read after
}

// start builds the bwrap command line and starts it; it returns once the
// sandbox's session exists, so that Signal reaches the kernel.
func (b *Bwrap) start(ctx context.Context, req Request, sl *slot, cg *kernelCgroup) (*Process, error) {
	cfg := &b.cfg
	uid := strconv.Itoa(sl.uid)

	// Everything in files goes to the child as fd 3, 4, ...; our copies
	// are closed once it has started.
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	fd := func(f *os.File) string {
		files = append(files, f)
		return strconv.Itoa(2 + len(files))
	}
	var openErr error
	data := func(content string) string {
		r, w, err := os.Pipe()
		if err != nil {
			openErr = errors.Join(openErr, fmt.Errorf("pipe: %w", err))
			return "-1"
		}
		// Small enough for the pipe buffer: no writer goroutine needed.
		_, err = w.WriteString(content)
		w.Close()
		if err != nil {
			openErr = errors.Join(openErr, fmt.Errorf("pipe: %w", err))
		}
		return fd(r)
	}
	infoR, infoW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("launch kernel: pipe: %w", err)
	}
	defer infoR.Close()
	// With a cgroup, the sandbox's pid 1 waits (--block-fd) until it and
	// the outer bwrap are in it: everything of the kernel is forked there.
	var blockW *os.File
	var block []string
	if cg != nil {
		var blockR *os.File
		if blockR, blockW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("launch kernel: pipe: %w", err)
		}
		defer blockW.Close()
		block = []string{"--block-fd", fd(blockR)}
	}

	args := []string{
		"-n", "1000", "--", cfg.BwrapPath,
		"--unshare-user", "--uid", uid, "--gid", uid, "--disable-userns",
		"--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session", "--hostname", cfg.Hostname,
		"--info-fd", fd(infoW),
	}
	args = append(args, block...)
	if b.filter != nil {
		args = append(args, "--seccomp", data(string(b.filter)))
	}
	args = append(args, b.roArgs...)
	args = append(args,
		"--ro-bind-data", data(passwdFile(sl.uid, cfg.Home)), "/etc/passwd",
		"--ro-bind-data", data(fmt.Sprintf("root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n", sl.uid)), "/etc/group",
		"--ro-bind-data", data(fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", cfg.Hostname)), "/etc/hosts",
		"--ro-bind-data", data(cfg.Hostname+"\n"), "/etc/hostname",
		"--ro-bind-data", data("passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n"), "/etc/nsswitch.conf",
		"--proc", "/proc",
		"--dev", "/dev", "--remount-ro", "/dev", // bwrap's /dev is an unlimited tmpfs
		"--bind", sl.scratch.path(subShm), "/dev/shm",
		// /tmp first: the pool's directories may lie under it.
		"--bind", sl.scratch.path(subTmp), "/tmp",
		"--symlink", "/tmp", "/var/tmp",
		"--bind", sl.scratch.path(subHome), cfg.Home,
		"--bind", sl.scratch.path(subRun), req.RuntimeDir,
		"--bind", sl.scratch.path(subWork), req.WorkDir,
		"--remount-ro", "/", // bwrap's root is an unlimited tmpfs too
		"--chdir", req.WorkDir,
		"--", cfg.PrlimitPath,
		fmt.Sprintf("--cpu=%d:%d", cfg.CPUTime/time.Second, cfg.CPUTime/time.Second+2),
		fmt.Sprintf("--as=%d", cfg.Memory),
		fmt.Sprintf("--nproc=%d", cfg.Processes),
		fmt.Sprintf("--nofile=%d", cfg.OpenFiles),
		fmt.Sprintf("--fsize=%d", cfg.FileSize),
		"--core=0",
		"--",
	)
	args = append(args, req.Argv...)
	if openErr != nil {
		return nil, fmt.Errorf("launch kernel: %w", openErr)
	}

	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
		"HOME=" + cfg.Home, "USER=sandbox", "LOGNAME=sandbox", "SHELL=/bin/sh",
		"LANG=C.UTF-8", "TERM=xterm-color", "TMPDIR=/tmp",
		"PWD=" + req.WorkDir, // else exec sets the outer bwrap's "/"
	}
	env = append(env, cfg.Env...)
	env = append(env, req.Env...) // exec keeps the last of duplicates

	if err := markCloexec(); err != nil {
		return nil, fmt.Errorf("launch kernel: %w", err)
	}
	out := &headWriter{w: req.Output}
	cmd := exec.Command(cfg.ChoomPath, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(sl.uid), Gid: uint32(sl.uid), Groups: []uint32{}},
	}

	r := &run{cg: cg}
	scr, killPath, kuid := sl.scratch, cfg.KillPath, sl.uid
	p, err := start(cmd, func() {
		// Nothing of the kernel may run once Done is closed, and nothing
		// it left in the runtime dir may meet the pool's next write there.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		swept := endLeftovers(ctx, cg, killPath, kuid)
		sl.swept.Store(swept == nil)
		r.cleanupErr = errors.Join(swept, scr.emptyRun())
	})
	for _, f := range files {
		f.Close()
	}
	files = nil
	if err != nil {
		return nil, fmt.Errorf("launch kernel: %w", err)
	}
	p.explain = r.explain

	child, err := readChildPid(ctx, infoR)
	if err == nil && cg != nil {
		if err = cg.placeTree(p.Pid()); err == nil {
			_, err = blockW.Write([]byte{1})
		}
	}
	if err == nil {
		err = waitSession(ctx, p, child)
	}
	if err != nil {
		p.Kill()
		<-p.done
		return nil, fmt.Errorf("launch kernel in bwrap: %w (exit: %v): %s", err, p.err, strings.TrimSpace(out.head()))
	}
	// The outer bwrap would die of SIGINT (and take the sandbox with it),
	// while the inner one, pid 1 of the sandbox, ignores what it has no
	// handler for: Signal goes to the session bwrap made inside, where the
	// kernel runs; Kill ends both, and pid 1's death ends every process of
	// the sandbox, whatever group it moved to.
	p.signalGroup = child
	p.killGroups = []int{child, p.Pid()}
	go r.endAtLifespan(p, cfg.Lifespan)
	return p, nil
}

// endAtLifespan kills p once it has lived lifespan, unless it is done first.
func (r *run) endAtLifespan(p *Process, lifespan time.Duration) {
	t := time.NewTimer(lifespan)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		r.lifespanHit.Store(true)
		p.Kill()
	}
}

// launchForked makes the kernel of req by forking the template for kind,
// starting the template first if there is none (or it died), or if the
// one there is due for replacement (Config.ForkMax kernels made, or a file
// it imported changed on disk). A replaced template forks no more and
// ends once its last kernel has: no kernel is lost.
func (b *Bwrap) launchForked(ctx context.Context, req Request, sl *slot, kind forkKind, args []string, cg *kernelCgroup) (*Process, error) {
	roots := [2]string{filepath.Dir(req.WorkDir), filepath.Dir(req.RuntimeDir)}
	key := strings.Join(kind.command, "\x00") + "\x00\x00" + roots[0] + "\x00" + roots[1]
	// One start per template at a time: launches that come meanwhile wait
	// for it rather than start templates of their own (and a Sage
	// template's start holds up no Python kernel).
	b.mu.Lock()
	start := b.starting[key]
	if start == nil {
		start = &sync.Mutex{}
		b.starting[key] = start
	}
	b.mu.Unlock()
	start.Lock()
	b.mu.Lock()
	t := b.templates[key]
	b.mu.Unlock()
	if t != nil && t.alive() {
		if why := t.due(b.cfg.ForkMax, b.checkEvery); why != "" {
			b.mu.Lock()
			delete(b.templates, key)
			for old := range b.retired {
				if !old.alive() {
					delete(b.retired, old)
				}
			}
			b.retired[t] = true
			b.mu.Unlock()
			t.retire(why)
			t = nil
		}
	}
	if t == nil || !t.alive() {
		var err error
		if t, err = b.startTemplate(ctx, kind, roots[0], roots[1]); err != nil {
			start.Unlock()
			return nil, err
		}
		b.mu.Lock()
		b.templates[key] = t
		b.mu.Unlock()
	}
	t.mu.Lock()
	t.forks++
	t.pending++
	t.mu.Unlock()
	start.Unlock()
	p, err := t.launch(ctx, req, sl, args, cg)
	t.mu.Lock()
	t.pending--
	t.mu.Unlock()
	t.stopIfDone()
	return p, err
}

// Template describes a fork-server template, for tools that measure
// kernels: its processes are not kernels.
type Template struct {
	// Pid is the host pid of the template's Python process (named
	// cellgate-tmpl). Its children are the kernels, named as cold ones
	// (python3), each kernel's pid 1 (catatonit), and the spare, the next
	// kernel made ahead of its request (cellgate-spare).
	Pid int
	// Kind is the kernels it makes: "python" (ipykernel) or "sage".
	Kind string
	// Forks counts the kernels asked of it; Kernels are those still
	// running.
	Forks, Kernels int
	// Retired says why it was replaced ("" while it serves): it forks no
	// more and ends with its last kernel.
	Retired string
	// PSS is the template process's own proportional set size (its
	// kernels not included): the pages it shares with the kernels it
	// forked are divided among them, so the more kernels, the less it is.
	// 0 if it could not be read.
	PSS int64
}

// Templates lists the fork-server templates running now, serving or
// retired.
func (b *Bwrap) Templates() []Template {
	b.mu.Lock()
	all := make([]*template, 0, len(b.templates)+len(b.retired))
	for _, t := range b.templates {
		all = append(all, t)
	}
	for t := range b.retired {
		all = append(all, t)
	}
	b.mu.Unlock()
	var out []Template
	for _, t := range all {
		if !t.alive() {
			continue
		}
		t.mu.Lock()
		out = append(out, Template{Pid: t.pid, Kind: t.kind.name, Forks: t.forks, Kernels: len(t.children), Retired: t.retired})
		t.mu.Unlock()
	}
	for i := range out {
		out[i].PSS, _ = readPss(out[i].Pid)
	}
	return out
}

// Forks tells whether Launch makes the kernel argv starts by forking it
// from a template (Config.Fork, and a kernel it knows: ipykernel's and
// SageMath's), rather than starting it cold.
func (b *Bwrap) Forks(argv []string) bool {
	_, _, ok := b.forkable(argv)
	return ok && b.cfg.Fork
}

// Close stops the fork-server templates, retired ones too (the kernels
// they made end with them). Cold kernels are the pool's to stop.
func (b *Bwrap) Close() {
	b.mu.Lock()
	templates, retired := b.templates, b.retired
	b.templates, b.retired = map[string]*template{}, map[*template]bool{}
	b.mu.Unlock()
	for _, t := range templates {
		t.stop()
	}
	for t := range retired {
		t.stop()
	}
}

// markCloexec sets FD_CLOEXEC on every descriptor above stderr, so that
// none reaches a kernel (bwrap passes on whatever it inherits). Go opens
// its own descriptors with it, and libzmq does too, but descriptors the
// gateway inherited from whoever started it (a shell, a supervisor) lack
// it. Only the flag changes: the gateway keeps using them as before.
func markCloexec() error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed meanwhile (the directory's own), or fine
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC); err != nil {
			return fmt.Errorf("descriptor %d: %w", fd, err)
		}
	}
	return nil
}

// explain names the limit that ended a kernel. bwrap exits with 128+n when
// the kernel died of signal n.
func (r *run) explain(err error) error {
	var ee *exec.ExitError
	switch {
	case r.lifespanHit.Load():
		err = fmt.Errorf("%w: %w", ErrLifespan, err)
	case r.cg.killedAtMemory():
		err = fmt.Errorf("%w: %w", r.cg.memoryError(r.cg.oomAtEnd.Load()), err)
	case errors.As(err, &ee) && ee.ExitCode() > 128:
		sig := syscall.Signal(ee.ExitCode() - 128)
		if sig == syscall.SIGXCPU {
			err = fmt.Errorf("%w: %w", ErrCPULimit, err)
		} else {
			err = fmt.Errorf("kernel killed by %v: %w", sig, err)
		}
	}
	if r.cleanupErr != nil {
		err = errors.Join(err, r.cleanupErr)
	}
	return err
}

// readChildPid reads the pid (in our namespace) of the sandbox's pid 1 from
// bwrap's --info-fd.
func readChildPid(ctx context.Context, r *os.File) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := r.SetReadDeadline(deadline); err != nil {
		return 0, fmt.Errorf("bwrap info: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Now()) })
	defer stop()
	var info struct {
		ChildPid int `json:"child-pid"`
	}
	if err := json.NewDecoder(r).Decode(&info); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, errors.New("bwrap gave up before starting the sandbox")
		}
		return 0, fmt.Errorf("bwrap info: %w", err)
	}
	if info.ChildPid <= 1 {
		return 0, fmt.Errorf("bwrap info: bad child pid %d", info.ChildPid)
	}
	return info.ChildPid, nil
}

// waitSession waits until the sandbox's pid 1 leads its own session
// (--new-session), which bwrap does soon after reporting it.
func waitSession(ctx context.Context, p *Process, child int) error {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if pg, err := unix.Getpgid(child); err == nil && pg == child {
			return nil
		}
		select {
		case <-p.done:
			return errors.New("sandbox ended while starting")
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errors.New("sandbox session did not appear")
		case <-time.After(time.Millisecond):
		}
	}
}

func passwdFile(uid int, home string) string {
	return fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\n"+
		"sandbox:x:%d:%d:cellgate kernel:%s:/bin/sh\n"+
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", uid, uid, home)
}

// readOnlyArgs turns host paths into bwrap arguments: symlinks (the merged
// /usr links, /etc/localtime) are recreated, the rest bound read-only.
func readOnlyArgs(paths []string) ([]string, error) {
	var args []string
	for _, p := range paths {
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			return nil, fmt.Errorf("read-only path: %w", err)
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return nil, fmt.Errorf("read-only path: %w", err)
			}
			args = append(args, "--symlink", target, p)
		default:
			args = append(args, "--ro-bind", p, p)
		}
	}
	return args, nil
}

// headWriter passes output on and keeps its first KiB, for the error
// message when bwrap fails before the kernel starts.
type headWriter struct {
	w   io.Writer
	mu  sync.Mutex
	buf []byte
}

func (h *headWriter) Write(b []byte) (int, error) {
	h.mu.Lock()
	if n := 1024 - len(h.buf); n > 0 {
		h.buf = append(h.buf, b[:min(n, len(b))]...)
	}
	h.mu.Unlock()
	if h.w == nil {
		return len(b), nil
	}
	return h.w.Write(b)
}

func (h *headWriter) head() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return string(h.buf)
}
