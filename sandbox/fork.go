package sandbox

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// forkServerSource is the template's program (forkserver.py).
//
//go:embed forkserver.py
var forkServerSource string

// ErrForkServer is wrapped by the error of a kernel the fork server could
// not start; Launch then starts it cold.
var ErrForkServer = errors.New("fork server")

// forkKind is a kind of kernel the fork server makes: what its template
// runs and imports, and what each fork then runs.
type forkKind struct {
	name    string   // "python" or "sage"
	command []string // what runs the template's program (before -c)
	module  string   // the kernel, run as __main__ in each fork
	preload []string // modules the template imports
	warmup  string   // code the template runs once after its imports
	// keepEnv: each kernel's environment is the template's (sage-env's
	// settings) with the kernel's own over it, as a cold kernel's is.
	keepEnv bool
}

// sageWarmup is the template's throw-away plot: a first plot costs a Sage
// kernel seconds (matplotlib, fonts, fast_float), as the Sage Cell Server
// found.
const sageWarmup = `import os
from sage.all import SR, plot, sin
plot(sin(SR.var("x")), (SR.var("x"), 0, 1)).save("/tmp/cellgate-warmup.png")
os.remove("/tmp/cellgate-warmup.png")
`

// pythonWarmup draws a throw-away plot when the template has imported
// matplotlib (ForkPreload): a kernel's first plot then costs it no font
// loading and no first use of the Agg renderer. Not through pyplot: that
// would load the inline backend in the template, where there is no shell
// for it to hook into, and no kernel would load it again.
const pythonWarmup = `import io, sys
if "matplotlib" in sys.modules:
    from matplotlib.figure import Figure
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
`

// forkable reports whether argv starts a kernel the fork server can make
// (`PYTHON -m ipykernel_launcher -f FILE`, or, with ForkSagePreload,
// `SAGE --python -m sage.repl.ipython_kernel -f FILE`), of which kind, and
// the kernel's own arguments.
func (b *Bwrap) forkable(argv []string) (forkKind, []string, bool) {
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return forkKind{}, nil, false
	}
	base := filepath.Base(argv[0])
	switch {
	case len(argv) == 5 && strings.HasPrefix(base, "python3") &&
		argv[1] == "-m" && argv[2] == "ipykernel_launcher" && argv[3] == "-f":
		return forkKind{
			name: "python", command: argv[:1], module: "ipykernel_launcher", preload: b.cfg.ForkPreload,
			warmup: pythonWarmup,
		}, argv[3:], true
	case len(argv) == 6 && base == "sage" && len(b.cfg.ForkSagePreload) > 0 &&
		argv[1] == "--python" && argv[2] == "-m" && argv[3] == "sage.repl.ipython_kernel" && argv[4] == "-f":
		return forkKind{
			name: "sage", command: argv[:2], module: "sage.repl.ipython_kernel", preload: b.cfg.ForkSagePreload,
			warmup: sageWarmup, keepEnv: true,
		}, argv[4:], true
	}
	return forkKind{}, nil, false
}

// template is one fork server: a long-lived process that has imported the
// kernel machinery and forks kernels on request.
type template struct {
	b     *Bwrap
	kind  forkKind
	roots [2]string // the parents of WorkDir and RuntimeDir it can reach
	cmd   *exec.Cmd
	ctrl  *os.File
	done  chan struct{} // closed when the template has exited
	pid   int           // host pid of the template's Python process
	began time.Time

	// Set while it starts, then read and changed under its b.starting lock
	// only: when to replace it (see Bwrap.launchForked).
	files   []fileStamp // what it imported, as it was on disk at its start
	checked time.Time   // when files were last compared with the disk
	changed string      // what changed on disk since it started, once seen

	sendMu sync.Mutex // one request on the wire at a time

	mu       sync.Mutex
	waiting  map[string]chan forkReply // by request id
	children map[int]*forkedKernel     // by pid in the template's namespace
	// early holds exit codes of children that ended before launch had
	// registered them (one that fails at once can).
	early map[int]int
	err   error // why it ended
	// pending counts launches under way; a retired template forks no
	// more and is stopped once it has neither pending launches nor
	// children (its kernels die with it).
	pending int
	retired string // why it was replaced; "" while it serves
	forks   int    // kernels asked of it (changed under b.starting too)
}

// fileStamp is what tells a file (or directory) changed: a package
// upgrade replaces files (new inode, directory mtime), an edit changes
// size, mtime and ctime.
type fileStamp struct {
	path         string
	ino          uint64
	size         int64
	mtime, ctime unix.Timespec
}

func stampOf(path string) (fileStamp, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileStamp{}, err
	}
	return fileStamp{path: path, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// forkReply is the template's answer to a launch request.
type forkReply struct {
	ID    string `json:"id"`
	Pid   int    `json:"pid"` // in the template's pid namespace
	Error string `json:"error"`
	// hostPids are, on the host, Pid and its pid 1, from the pidfds
	// that came with the reply; pidErr says why there are none.
	hostPids []int
	pidErr   error
}

// forkedKernel is what the template's exit notice completes.
type forkedKernel struct {
	p    *Process
	exit func(code int, err error)
}

// startTemplate starts the fork server for kind, able to make kernels
// whose WorkDir and RuntimeDir lie in workRoot and runtimeRoot.
func (b *Bwrap) startTemplate(ctx context.Context, kind forkKind, workRoot, runtimeRoot string) (*template, error) {
	c := &b.cfg
	ctrlParent, ctrlChild, err := socketpair()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrForkServer, err)
	}
	defer ctrlChild.Close()
	filterR, filterW, err := os.Pipe()
	if err != nil {
		ctrlParent.Close()
		return nil, fmt.Errorf("%w: %w", ErrForkServer, err)
	}
	defer filterR.Close()
	go func() {
		// Bigger than a pipe's buffer is possible in principle: write off
		// this goroutine.
		_, _ = filterW.Write(b.filter)
		filterW.Close()
	}()
	config, _ := json.Marshal(map[string]any{
		"preload":  kind.preload,
		"warmup":   kind.warmup,
		"module":   kind.module,
		"keep_env": kind.keepEnv,
		"prepare":  c.ForkPrepare,
		"hostname": c.Hostname,
		"pid1":     []string{c.SetprivPath, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", c.CatatonitPath, "-P"},
		"limits": map[string]int64{
			"cpu": int64(c.CPUTime / time.Second), "as": c.Memory, "nproc": int64(c.Processes),
			"nofile": int64(c.OpenFiles), "fsize": c.FileSize,
		},
	})
	args := []string{
		// Capabilities in the template's own user namespace only: it makes
		// each kernel's namespaces and mounts, then the kernel drops them.
		// These are the ones it uses (CAP_SETPCAP to empty the kernel's
		// bounding set); bwrap leaves root of the namespace all of them.
		"--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
		"--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session", "--hostname", c.Hostname,
	}
	// bwrap, as root of this namespace, makes the directories it needs
	// mode 0700: the kernels, other uids, must be able to pass them.
	args = append(args, "--perms", "0755", "--dir", "/etc")
	args = append(args, b.roArgs...)
	var files []*os.File
	data := func(content string) string {
		r, w, err := os.Pipe()
		if err != nil {
			return "-1"
		}
		go func() { _, _ = w.WriteString(content); w.Close() }()
		files = append(files, r)
		return strconv.Itoa(4 + len(files))
	}
	// The generated files too: bwrap makes them 0600, the template's, and
	// a kernel could then neither resolve localhost nor find its passwd
	// entry.
	args = append(args,
		"--perms", "0644", "--ro-bind-data", data(b.allPasswd()), "/etc/passwd",
		"--perms", "0644", "--ro-bind-data", data(b.allGroup()), "/etc/group",
		"--perms", "0644", "--ro-bind-data", data(fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", c.Hostname)), "/etc/hosts",
		"--perms", "0644", "--ro-bind-data", data(c.Hostname+"\n"), "/etc/hostname",
		"--perms", "0644", "--ro-bind-data", data("passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n"), "/etc/nsswitch.conf",
		"--proc", "/proc",
		"--dev", "/dev", "--remount-ro", "/dev",
		"--tmpfs", "/tmp",
	)
	for _, d := range openDirs(c.Home, workRoot, runtimeRoot) {
		if d == c.Home {
			// A home of its own, writable (sage-env and Sage's imports
			// write there); each kernel's own covers it.
			args = append(args, "--perms", "0755", "--tmpfs", d)
			continue
		}
		args = append(args, "--perms", "0755", "--dir", d)
	}
	for _, d := range c.HomeDirs {
		args = append(args, "--dir", filepath.Join(c.Home, d))
	}
	args = append(args, "--remount-ro", "/", "--chdir", "/", "--")
	args = append(args, kind.command...)
	args = append(args, "-c", forkServerSource, string(config))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + c.Home, "LANG=C.UTF-8", "TMPDIR=/tmp",
	}
	env = append(env, c.Env...)
	if err := markCloexec(); err != nil {
		ctrlParent.Close()
		return nil, fmt.Errorf("%w: %w", ErrForkServer, err)
	}
	t := &template{
		b: b, kind: kind, roots: [2]string{workRoot, runtimeRoot}, ctrl: ctrlParent, began: time.Now(),
		done: make(chan struct{}), waiting: map[string]chan forkReply{}, children: map[int]*forkedKernel{},
		early: map[int]int{},
	}
	out := &headWriter{w: c.ForkLog}
	cmd := exec.Command(c.BwrapPath, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = append([]*os.File{ctrlChild, filterR}, files...)
	ids := []syscall.SysProcIDMap{
		{ContainerID: 0, HostID: c.ForkUID, Size: 1},
		{ContainerID: c.UIDBase, HostID: c.UIDBase, Size: c.UIDCount},
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// The template is root of this user namespace only: the host sees
		// ForkUID, and each kernel's uid as itself.
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: ids, GidMappings: ids,
		Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}},
		Setpgid:    true, Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		ctrlParent.Close()
		return nil, fmt.Errorf("%w: start: %w", ErrForkServer, err)
	}
	t.cmd = cmd
	// Kernels inherit it: the OOM killer picks them before the gateway.
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", cmd.Process.Pid), []byte("1000"), 0)
	ready := make(chan error, 1)
	go t.read(ready)
	go func() {
		err := cmd.Wait()
		t.ended(fmt.Errorf("%w exited (%v): %s", ErrForkServer, err, strings.TrimSpace(out.head())))
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.stop()
			return nil, err
		}
	case <-ctx.Done():
		t.stop()
		return nil, fmt.Errorf("%w: not ready: %w", ErrForkServer, ctx.Err())
	case <-t.done:
		return nil, t.err
	}
	return t, nil
}

// read dispatches the template's messages until its channel closes. A
// message that names a process (the template's ready, a launch's reply)
// comes with a pidfd of it, which tells its host pid.
func (t *template) read(ready chan<- error) {
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(4*4))
	first := true
	var paths []string
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(t.ctrl.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			if first {
				ready <- fmt.Errorf("%w: closed before it was ready", ErrForkServer)
			}
			t.ended(fmt.Errorf("%w: control channel closed: %v", ErrForkServer, err))
			return
		}
		hostPids, pidErr := pidsOfPidfds(oob[:oobn])
		var msg struct {
			Ready  bool     `json:"ready"`
			Exited int      `json:"exited"`
			Code   int      `json:"code"`
			Files  []string `json:"files"`
			forkReply
		}
		if err := json.Unmarshal(buf[:n], &msg); err != nil {
			t.ended(fmt.Errorf("%w: bad message %q: %w", ErrForkServer, buf[:n], err))
			t.stop()
			return
		}
		msg.hostPids, msg.pidErr = hostPids, pidErr
		switch {
		case msg.Files != nil && first:
			paths = append(paths, msg.Files...)
		case msg.Ready && first:
			first = false
			ready <- t.started(msg.hostPids, msg.pidErr, paths)
		case msg.Exited != 0:
			t.mu.Lock()
			k := t.children[msg.Exited]
			delete(t.children, msg.Exited)
			if k == nil && len(t.early) < 4096 {
				t.early[msg.Exited] = msg.Code
			}
			t.mu.Unlock()
			if k != nil {
				k.exit(msg.Code, nil)
			}
			t.stopIfDone()
		case msg.ID != "":
			t.mu.Lock()
			ch := t.waiting[msg.ID]
			delete(t.waiting, msg.ID)
			t.mu.Unlock()
			if ch != nil {
				ch <- msg.forkReply
			}
		}
	}
}

// started records, once the template is ready, its host pid and the
// stamps of the files it imported. Paths the gateway cannot stat are left
// out (the template sees the host's paths where it sees them at all). A
// file changed since the template began may have been imported before or
// after the change: the template is then due for replacement at once.
func (t *template) started(hostPids []int, pidErr error, paths []string) error {
	if pidErr == nil && len(hostPids) != 1 {
		pidErr = fmt.Errorf("want one pidfd, got %d", len(hostPids))
	}
	if pidErr != nil {
		return fmt.Errorf("%w: its pid: %w", ErrForkServer, pidErr)
	}
	t.pid = hostPids[0]
	// ctime is kept at the clock's tick: allow for one.
	since := t.began.Add(-10 * time.Millisecond)
	for _, p := range paths {
		st, err := stampOf(p)
		if err != nil {
			continue
		}
		if t.changed == "" && !time.Unix(st.ctime.Unix()).Before(since) {
			t.changed = p + " changed while the template started"
		}
		t.files = append(t.files, st)
	}
	return nil
}

// due says why t must be replaced before it forks again ("" if it need
// not): it has made max kernels, or a file it imported has changed on
// disk (compared at most once per every).
func (t *template) due(max int, every time.Duration) string {
	if t.forks >= max {
		return fmt.Sprintf("%d kernels forked", t.forks)
	}
	if t.changed == "" && time.Since(t.checked) >= every {
		t.checked = time.Now()
		for _, old := range t.files {
			if now, err := stampOf(old.path); err != nil || now != old {
				t.changed = old.path + " changed"
				break
			}
		}
	}
	return t.changed
}

// retire stops t from forking: it ends once the kernels it made have
// (they die with it) and launches under way are done.
func (t *template) retire(why string) {
	t.mu.Lock()
	t.retired = why
	t.mu.Unlock()
	t.stopIfDone()
}

// stopIfDone stops a retired template that has nothing left to serve.
func (t *template) stopIfDone() {
	t.mu.Lock()
	done := t.retired != "" && t.pending == 0 && len(t.children) == 0 && t.err == nil
	t.mu.Unlock()
	if done {
		t.stop()
	}
}

// ended records why the template stopped; every kernel it made is gone
// with it (their parent-death signal), and every request fails.
func (t *template) ended(err error) {
	t.mu.Lock()
	if t.err != nil {
		t.mu.Unlock()
		return
	}
	t.err = err
	children, waiting := t.children, t.waiting
	t.children, t.waiting = map[int]*forkedKernel{}, map[string]chan forkReply{}
	t.mu.Unlock()
	close(t.done)
	for _, ch := range waiting {
		ch <- forkReply{Error: err.Error()}
	}
	for _, k := range children {
		k.p.Kill()
		k.exit(-1, err)
	}
}

// stop ends the template and with it every kernel it made.
func (t *template) stop() {
	if t.cmd != nil && t.cmd.Process != nil {
		_ = syscall.Kill(-t.cmd.Process.Pid, syscall.SIGKILL)
	}
	_ = t.ctrl.Close()
}

// alive reports whether the template still serves.
func (t *template) alive() bool {
	select {
	case <-t.done:
		return false
	default:
		return true
	}
}

// launch forks a kernel for req in sl: its own uid, namespaces and tmpfs,
// exactly as a cold bwrap kernel gets them (see sandbox/doc.go).
func (t *template) launch(ctx context.Context, req Request, sl *slot, args []string, cg *kernelCgroup) (*Process, error) {
	c := &t.b.cfg
	var trees []*os.File
	defer func() {
		for _, f := range trees {
			f.Close()
		}
	}()
	for _, sub := range []string{subRun, subWork, subTmp, subHome, subShm} {
		fd, err := unix.OpenTree(unix.AT_FDCWD, sl.scratch.path(sub), unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("%w: detach %s: %w", ErrForkServer, sub, err)
		}
		trees = append(trees, os.NewFile(uintptr(fd), sub))
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrForkServer, err)
	}
	defer outW.Close()
	out := &headWriter{w: req.Output}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, bufio.NewReader(outR))
		outR.Close()
	}()
	env := map[string]string{}
	for _, kv := range append(append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
		"HOME=" + c.Home, "USER=sandbox", "LOGNAME=sandbox", "SHELL=/bin/sh",
		"LANG=C.UTF-8", "TERM=xterm-color", "TMPDIR=/tmp", "PWD=" + req.WorkDir,
	}, c.Env...), req.Env...) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	id := filepath.Base(req.WorkDir) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	msg, _ := json.Marshal(map[string]any{
		"id": id, "uid": sl.uid, "work": req.WorkDir, "runtime": req.RuntimeDir, "home": c.Home,
		"argv": args, "env": env,
	})
	fds := []int{int(outW.Fd())}
	for _, f := range trees {
		fds = append(fds, int(f.Fd()))
	}
	reply := make(chan forkReply, 1)
	t.mu.Lock()
	if t.err != nil {
		t.mu.Unlock()
		return nil, t.err
	}
	t.waiting[id] = reply
	t.mu.Unlock()
	t.sendMu.Lock()
	err = unix.Sendmsg(int(t.ctrl.Fd()), msg, unix.UnixRights(fds...), nil, 0)
	t.sendMu.Unlock()
	if err != nil {
		t.mu.Lock()
		delete(t.waiting, id)
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: send request: %w", ErrForkServer, err)
	}
	var r forkReply
	select {
	case r = <-reply:
	case <-ctx.Done():
		t.mu.Lock()
		delete(t.waiting, id)
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: no answer: %w", ErrForkServer, ctx.Err())
	}
	if r.Error != "" || r.Pid <= 0 {
		return nil, fmt.Errorf("%w: %s", ErrForkServer, r.Error)
	}
	err = r.pidErr
	if err == nil && len(r.hostPids) != 2 {
		err = fmt.Errorf("want two pidfds (the kernel, its pid 1), got %d", len(r.hostPids))
	}
	if err != nil {
		// It cannot be reached from here: have the template's group kill
		// reach it through the template.
		t.stop()
		return nil, fmt.Errorf("%w: the kernel's pid: %w", ErrForkServer, err)
	}
	// Kill reaches the group only until the kernel is done: the pid may be
	// reused after that.
	hostPid := r.hostPids[0]
	p := &Process{pid: hostPid, done: make(chan struct{}), killGroups: []int{hostPid}, adopter: r.hostPids[1]}
	r2 := &run{cg: cg}
	scr, killPath, kuid := sl.scratch, c.KillPath, sl.uid
	k := &forkedKernel{p: p}
	var once sync.Once
	k.exit = func(code int, cause error) {
		once.Do(func() {
			switch {
			case cause != nil:
				p.err = cause
			case code != 0:
				p.err = &forkExit{code: code}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			<-copied
			swept := endLeftovers(ctx, cg, killPath, kuid)
			sl.swept.Store(swept == nil)
			r2.cleanupErr = errors.Join(swept, scr.emptyRun())
			close(p.done)
		})
	}
	p.explain = r2.explainForked
	t.mu.Lock()
	code, ended := t.early[r.Pid]
	delete(t.early, r.Pid)
	switch {
	case t.err != nil:
		t.mu.Unlock()
		k.exit(-1, t.err)
		return p, nil
	case ended:
		t.mu.Unlock()
		k.exit(code, nil)
		return p, nil
	}
	t.children[r.Pid] = k
	t.mu.Unlock()
	go r2.endAtLifespan(p, c.Lifespan)
	return p, nil
}

// forkExit is how a forked kernel ended: its exit code, 128+n for signal n.
type forkExit struct{ code int }

func (e *forkExit) Error() string {
	if e.code > 128 {
		return "kernel killed by " + syscall.Signal(e.code-128).String()
	}
	return "exit status " + strconv.Itoa(e.code)
}

// explainForked names the limit that ended a forked kernel.
func (r *run) explainForked(err error) error {
	var fe *forkExit
	switch {
	case r.lifespanHit.Load():
		err = fmt.Errorf("%w: %w", ErrLifespan, err)
	case r.cg.killedAtMemory():
		err = fmt.Errorf("%w: %w", r.cg.memoryError(r.cg.oomAtEnd.Load()), err)
	case errors.As(err, &fe) && fe.code == 128+int(syscall.SIGXCPU):
		err = fmt.Errorf("%w: %w", ErrCPULimit, err)
	}
	if r.cleanupErr != nil {
		err = errors.Join(err, r.cleanupErr)
	}
	return err
}

// pidsOfPidfds reads the pidfds a control message carries (closing every
// descriptor it carries) and returns the host pids they refer to, as this
// process's /proc shows them in their fdinfo. None and no error for a
// message without descriptors.
func pidsOfPidfds(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	for _, m := range cmsgs {
		rights, err := unix.ParseUnixRights(&m)
		if err == nil {
			fds = append(fds, rights...)
		}
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	pids := make([]int, 0, len(fds))
	for _, fd := range fds {
		info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
		if err != nil {
			return nil, fmt.Errorf("pidfd: %w", err)
		}
		pid, err := pidfdPid(info)
		if err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// pidfdPid is the "Pid:" field of a pidfd's fdinfo: the process's pid in
// the reader's pid namespace (-1 once it has been reaped, 0 when it is
// not in that namespace).
func pidfdPid(fdinfo []byte) (int, error) {
	for _, line := range strings.Split(string(fdinfo), "\n") {
		v, ok := strings.CutPrefix(line, "Pid:")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil:
			return 0, fmt.Errorf("pidfd: bad Pid field %q", v)
		case pid == -1:
			return 0, errors.New("pidfd: the process has ended and been reaped")
		case pid <= 0:
			return 0, errors.New("pidfd: the process is not in the gateway's pid namespace")
		}
		return pid, nil
	}
	return 0, errors.New("pidfd: no Pid field (not a pidfd, or a Linux before 5.5)")
}

// openDirs lists paths and their ancestors below /, parents first: the
// directories the template's bwrap must make passable.
func openDirs(paths ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		var chain []string
		for d := filepath.Clean(p); d != "/" && d != "."; d = filepath.Dir(d) {
			chain = append([]string{d}, chain...)
		}
		for _, d := range chain {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out
}

// socketpair makes the template's control channel: SOCK_SEQPACKET keeps
// each message whole.
func socketpair() (*os.File, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("control channel: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "fork-control"), os.NewFile(uintptr(fds[1]), "fork-control-child"), nil
}

// allPasswd names every kernel uid "sandbox": one file serves every fork.
func (b *Bwrap) allPasswd() string {
	var s strings.Builder
	s.WriteString("root:x:0:0:root:/root:/usr/sbin/nologin\n")
	for uid := b.cfg.UIDBase; uid < b.cfg.UIDBase+b.cfg.UIDCount; uid++ {
		fmt.Fprintf(&s, "sandbox:x:%d:%d:cellgate kernel:%s:/bin/sh\n", uid, uid, b.cfg.Home)
	}
	s.WriteString("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
	return s.String()
}

func (b *Bwrap) allGroup() string {
	var s strings.Builder
	s.WriteString("root:x:0:\n")
	for gid := b.cfg.UIDBase; gid < b.cfg.UIDBase+b.cfg.UIDCount; gid++ {
		fmt.Fprintf(&s, "sandbox:x:%d:\n", gid)
	}
	s.WriteString("nogroup:x:65534:\n")
	return s.String()
}
