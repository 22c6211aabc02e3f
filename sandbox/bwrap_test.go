package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// identity is what identity.py reports.
type identity struct {
	UID, EUID, GID int
	Groups         []int
	Name, Home     string
	CWD            string
	CapEff         string
	CapBnd         string
	CapInh         string
	CapPrm         string
	CapAmb         string
	NoNewPrivs     string
	UserNS         int
	Seccomp        string
	Denied         []int
	GetPid         int
	Setuid         string
	Env            map[string]string
}

// identityArgs names the syscalls identity.py tries: the denied ones
// (and, on x86_64, getpid by its x32 number), then getpid.
func identityArgs() map[string]any {
	var denied []int
	for _, nr := range deniedSyscalls {
		denied = append(denied, int(nr))
	}
	if runtime.GOARCH == "amd64" {
		denied = append(denied, 0x40000000|unix.SYS_GETPID)
	}
	return map[string]any{"denied": denied, "getpid": unix.SYS_GETPID}
}

func TestBwrapIdentity(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	k1 := launchPy(t, b, hostile(t, "identity.py", identityArgs()))
	k2 := launchPy(t, b, hostile(t, "identity.py", identityArgs()))
	var id1, id2 identity
	k1.result(t, &id1)
	k2.result(t, &id2)
	checkIdentities(t, b.Config(), id1, id2)
	if id1.CWD != k1.req.WorkDir {
		t.Errorf("cwd %s, want WorkDir %s", id1.CWD, k1.req.WorkDir)
	}
}

// checkIdentities checks what identity.py reported in two live kernels.
func checkIdentities(t *testing.T, cfg Config, id1, id2 identity) {
	t.Helper()
	for _, id := range []identity{id1, id2} {
		if id.UID == 0 || id.UID == os.Getuid() || id.EUID != id.UID || id.GID != id.UID {
			t.Errorf("kernel runs as uid %d euid %d gid %d (gateway %d)", id.UID, id.EUID, id.GID, os.Getuid())
		}
		if id.UID < cfg.UIDBase || id.UID >= cfg.UIDBase+cfg.UIDCount {
			t.Errorf("uid %d outside %d+%d", id.UID, cfg.UIDBase, cfg.UIDCount)
		}
		if len(id.Groups) > 1 || (len(id.Groups) == 1 && id.Groups[0] != id.GID) {
			t.Errorf("supplementary groups %v", id.Groups)
		}
		if none := "0000000000000000"; id.CapEff != none || id.CapBnd != none || id.CapInh != none || id.CapPrm != none || id.CapAmb != none {
			t.Errorf("capabilities: effective %s bounding %s inheritable %s permitted %s ambient %s", id.CapEff, id.CapBnd, id.CapInh, id.CapPrm, id.CapAmb)
		}
		if id.NoNewPrivs != "1" {
			t.Errorf("no_new_privs is %s", id.NoNewPrivs)
		}
		if id.UserNS != -1 {
			t.Errorf("kernel could create a user namespace")
		}
		if seccompFilter() != nil {
			if want := len(identityArgs()["denied"].([]int)); len(id.Denied) != want {
				t.Errorf("%d denied syscalls tried, want %d", len(id.Denied), want)
			}
			if id.Seccomp != "2" {
				t.Errorf("seccomp mode %s, want 2 (filter)", id.Seccomp)
			}
			for i, r := range id.Denied {
				if r != -int(syscall.EPERM) {
					t.Errorf("denied syscall %d returned %d", i, r)
				}
			}
		}
		if id.GetPid != 2 {
			t.Errorf("getpid in the sandbox: %d, want 2 (after its init)", id.GetPid)
		}
		if id.Setuid == "root" {
			t.Errorf("kernel became root with setuid(0)")
		}
		if id.Name != "sandbox" || id.Home != cfg.Home {
			t.Errorf("user %q home %q", id.Name, id.Home)
		}
		for e := range id.Env {
			if strings.Contains(e, "SSL") || strings.Contains(e, "GO") || strings.Contains(e, "CELLGATE") {
				t.Errorf("gateway environment leaked: %s", e)
			}
		}
	}
	if id1.UID == id2.UID {
		t.Errorf("two live kernels share uid %d", id1.UID)
	}
}

// sandboxTop is what / of a sandbox must hold: what bwrap makes (dev,
// proc, tmp, etc for the generated files, var for /var/tmp), the first
// component of each read-only path that exists on this host, of the home
// and of the kernel's directories. Anything else is a leak.
func sandboxTop(cfg Config, dirs ...string) []string {
	top := map[string]bool{"dev": true, "proc": true, "tmp": true, "etc": true, "var": true}
	first := func(p string) string { return strings.SplitN(strings.TrimPrefix(p, "/"), "/", 2)[0] }
	for _, p := range cfg.ReadOnly {
		if _, err := os.Lstat(p); err == nil {
			top[first(p)] = true
		}
	}
	for _, d := range append(dirs, cfg.Home) {
		top[first(d)] = true
	}
	names := make([]string, 0, len(top))
	for n := range top {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func TestBwrapFilesystem(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	sibling := startWitness(t, b)
	marker, err := os.CreateTemp("", "host-marker-")
	if err != nil {
		t.Fatal(err)
	}
	marker.Close()
	defer os.Remove(marker.Name())
	run, work := newDirs(t)
	// What the host has and the sandbox must not show, /etc and / to list.
	hidden := []string{"/root", "/work", sibling.req.WorkDir, sibling.req.RuntimeDir, marker.Name(), "/sys/class/net"}
	paths := append([]string{"/etc/shadow", "/etc", "/"}, hidden...)
	// files.py, then symlinks.py planting links for the gateway to trip
	// over, then a wait: the host side is checked while the kernel runs.
	links := map[string]string{"link": "/etc/hostname", filepath.Join(run, "link"): "/etc/hostname"}
	k := launchIn(t, b, Request{
		Argv: []string{"/usr/bin/python3", "-c", lingering(
			hostile(t, "files.py", map[string]any{"paths": paths})+
				hostile(t, "symlinks.py", map[string]any{"links": links}), 120*time.Second)},
		RuntimeDir: run, WorkDir: work,
	})
	type probe struct {
		Listed []string
		Read   string
		Error  string
	}
	var r struct {
		FDs   []int
		Paths map[string]probe
		Procs map[string]struct {
			UID int
			Cmd string
		}
		Denied  map[string]string
		Allowed map[string]string
	}
	var planted struct{ Planted []string }
	k.results(t, 30*time.Second, &r, &planted)
	if r.Paths["/etc/shadow"].Error != "ENOENT" {
		t.Errorf("/etc/shadow in the sandbox: %+v, want ENOENT", r.Paths["/etc/shadow"])
	}
	for _, p := range hidden {
		if got, ok := r.Paths[p]; !ok || got.Error == "" {
			t.Errorf("host path %s visible: %+v", p, got)
		}
	}
	if r.Paths["/etc"].Error != "" || r.Paths["/"].Error != "" {
		t.Errorf("listing /etc or /: %+v %+v", r.Paths["/etc"], r.Paths["/"])
	}
	for _, e := range r.Paths["/etc"].Listed {
		if strings.Contains(e, "shadow") || e == "sudoers" || e == "ssl" || e == "ssh" {
			t.Errorf("/etc/%s is visible", e)
		}
	}
	if wantTop := sandboxTop(b.cfg, run, work); !slices.Equal(r.Paths["/"].Listed, wantTop) {
		t.Errorf("top level %v, want %v", r.Paths["/"].Listed, wantTop)
	}
	var procs []int
	for pid := range r.Procs {
		n, err := strconv.Atoi(pid)
		if err != nil {
			t.Fatalf("pid %q", pid)
		}
		procs = append(procs, n)
	}
	if len(procs) == 0 || len(procs) > 2 || slices.Max(procs) > 10 {
		t.Errorf("/proc shows processes %v: more than the sandbox's init and kernel", procs)
	}
	if !slices.Equal(r.FDs, []int{0, 1, 2, 3}) { // 3: the listing's own
		t.Errorf("kernel inherited descriptors: %v", r.FDs)
	}
	if len(r.Denied) == 0 || len(r.Allowed) == 0 {
		t.Errorf("no writes tried: %+v %+v", r.Denied, r.Allowed)
	}
	for p, d := range r.Denied {
		if d == "written" {
			t.Errorf("write to %s succeeded where it must not", p)
		}
	}
	for p, a := range r.Allowed {
		if a != "written" {
			t.Errorf("write to %s, a private dir, failed: %v", p, a)
		}
	}
	if len(planted.Planted) != len(links)+3 {
		t.Errorf("planted %v", planted.Planted)
	}
	// The gateway sees the kernel's files where it expects them, and the
	// kernel's symlinks do not lead it elsewhere.
	for name, want := range map[string]string{"out.txt": "x", "ok.txt": "fine"} {
		if data, err := os.ReadFile(filepath.Join(work, name)); err != nil || string(data) != want {
			t.Errorf("kernel's file %s on the host: %q, %v", name, data, err)
		}
	}
	for _, link := range []string{filepath.Join(work, "link"), filepath.Join(run, "link"), filepath.Join(work, "sub", "passwd")} {
		if _, err := os.ReadFile(link); !errors.Is(err, syscall.ELOOP) {
			t.Errorf("gateway followed the kernel's symlink %s: %v", link, err)
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(work, &st); err != nil || st.Type != tmpfsMagic {
		t.Errorf("WorkDir is not the kernel's tmpfs: type %x, %v", st.Type, err)
	}
	sibling.checkAlive(t)
}

const tmpfsMagic = 0x01021994

func TestBwrapNetwork(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	witness := startWitness(t, b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	abstract := fmt.Sprintf("cellgate-test-%d", os.Getpid())
	uln, err := net.Listen("unix", "@"+abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	accepted := make(chan struct{}, 2)
	for _, l := range []net.Listener{ln, uln} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
				accepted <- struct{}{}
			}
		}()
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	k := launchPy(t, b, hostile(t, "network.py", map[string]any{"connect": map[string][]string{
		"tcp": {"inet", "127.0.0.1", port}, "abstract": {"abstract", abstract},
	}}))
	var r struct {
		Interfaces []string
		ProcNetDev []string `json:"proc net dev"`
		Sys        bool
		Connect    map[string]string
		Own        string `json:"own loopback"`
	}
	k.result(t, &r)
	if !slices.Equal(r.Interfaces, []string{"lo"}) || !slices.Equal(r.ProcNetDev, []string{"lo"}) || r.Sys {
		t.Errorf("interfaces %v, /proc/net/dev %v, /sys/class/net %v: want only lo", r.Interfaces, r.ProcNetDev, r.Sys)
	}
	if r.Connect["tcp"] != "ECONNREFUSED" || r.Connect["abstract"] != "ECONNREFUSED" {
		t.Errorf("kernel reached the host: tcp %v, abstract unix %v", r.Connect["tcp"], r.Connect["abstract"])
	}
	if r.Own != "connected" {
		t.Errorf("kernel's own loopback does not work: %v", r.Own)
	}
	select {
	case <-accepted:
		t.Error("the host's listener accepted a connection from the sandbox")
	default:
	}
	witness.checkAlive(t)
}

// uidOf reads the "uid N" line a script printed.
func uidOf(t *testing.T, k *kernel) int {
	t.Helper()
	k.waitFor(t, "uid ", 30*time.Second)
	_, rest, _ := strings.Cut(k.out.String(), "uid ")
	line, _, _ := strings.Cut(rest, "\n")
	uid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("no uid in output: %v\n%s", err, k.out)
	}
	return uid
}

// closeAndCheckGone closes the kernel and checks nothing of its uid runs.
func closeAndCheckGone(t *testing.T, k *kernel, uid int) {
	t.Helper()
	if err := k.p.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if left := uidProcesses(t, uid); len(left) > 0 {
		t.Errorf("processes of uid %d survive Close: %v", uid, left)
	}
}

func TestBwrapForkBomb(t *testing.T) {
	t.Parallel()
	const limit = 30
	b := newBwrap(t, func(c *Config) { c.Processes = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, lingering(hostile(t, "forkbomb.py", nil), 120*time.Second))
	var r struct {
		UID    int
		Errno  string
		Forked int
	}
	k.results(t, 30*time.Second, &r)
	uid := r.UID
	if r.Errno != "EAGAIN" || r.Forked >= limit {
		t.Errorf("fork bomb: %s after %d forks (limit %d processes)", r.Errno, r.Forked, limit)
	}
	// The outer bwrap runs as the uid too, outside the sandbox's user
	// namespace where the limit counts.
	if n := len(uidProcesses(t, uid)); n > limit+1 {
		t.Errorf("%d processes run as the kernel's uid, limit %d", n, limit)
	}
	witness.checkAlive(t)
	closeAndCheckGone(t, k, uid)
	witness.checkAlive(t)
}

func TestBwrapCPULimit(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, func(c *Config) { c.CPUTime = time.Second })
	witness := startWitness(t, b)
	k := launchPy(t, b, hostile(t, "cpu.py", nil))
	err := k.wait(t, time.Minute)
	if !errors.Is(err, ErrCPULimit) {
		t.Errorf("busy loop ended with %v, want ErrCPULimit\n%s", err, k.out)
	}
	witness.checkAlive(t)
}

func TestBwrapMemoryLimit(t *testing.T) {
	t.Parallel()
	const limit = 512 << 20
	b := newBwrap(t, func(c *Config) { c.Memory = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, hostile(t, "memory.py", map[string]any{"limit": limit}))
	var r struct {
		Big  string
		Grew int64
	}
	k.result(t, &r)
	if r.Big != "MemoryError" || r.Grew <= 0 || r.Grew >= limit {
		t.Errorf("allocating past %d bytes: big %s, grew to %d", limit, r.Big, r.Grew)
	}
	witness.checkAlive(t)
}

func TestBwrapDiskLimit(t *testing.T) {
	t.Parallel()
	const disk, inodes, fsize = 4 << 20, 500, 1 << 20
	b := newBwrap(t, func(c *Config) { c.Disk, c.Inodes, c.FileSize = disk, inodes, fsize })
	witness := startWitness(t, b)
	k := launchPy(t, b, hostile(t, "disk.py", map[string]any{"file_size": fsize}))
	var r struct {
		FileSize  string `json:"file size"`
		Fill      string
		Filled    int
		AfterFill map[string]string `json:"after fill"`
		Inodes    string
		Files     int
	}
	k.result(t, &r)
	if r.FileSize != "EFBIG" {
		t.Errorf("writing past FileSize: %v, want EFBIG", r.FileSize)
	}
	if r.Fill != "ENOSPC" || r.Filled > disk {
		t.Errorf("filling the disk: %s after %d bytes (limit %d)", r.Fill, r.Filled, disk)
	}
	// The working directory, /tmp, HOME and /dev/shm are one tmpfs: all
	// full once /tmp is.
	if len(r.AfterFill) != 4 {
		t.Errorf("after filling: %v, want the kernel's four places", r.AfterFill)
	}
	for place, got := range r.AfterFill {
		if got != "ENOSPC" {
			t.Errorf("after filling /tmp, a write in %s: %s, want ENOSPC", place, got)
		}
	}
	if r.Inodes != "ENOSPC" || r.Files > inodes {
		t.Errorf("creating files: %s after %d (limit %d)", r.Inodes, r.Files, inodes)
	}
	witness.checkAlive(t)
}

func TestBwrapOpenFiles(t *testing.T) {
	t.Parallel()
	const limit = 64
	b := newBwrap(t, func(c *Config) { c.OpenFiles = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, hostile(t, "openfiles.py", nil))
	var r struct {
		Files, Sockets string
		Opened         int
	}
	k.result(t, &r)
	if r.Files != "EMFILE" || r.Opened >= limit || r.Sockets != "EMFILE" {
		t.Errorf("opening files: %s after %d, then sockets: %s (limit %d)", r.Files, r.Opened, r.Sockets, limit)
	}
	witness.checkAlive(t)
}

func TestBwrapKillEverything(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	witness := startWitness(t, b)
	k := launchPy(t, b, hostile(t, "kill.py", map[string]any{"probe": map[string]int{
		"test": os.Getpid(), "witness": witness.p.Pid(),
	}}))
	var r struct {
		Probe map[string]string
		Init  bool `json:"init alive"`
		Child int
	}
	k.result(t, &r)
	if !r.Init || r.Child != -int(syscall.SIGKILL) {
		t.Errorf("inside: sandbox init alive %v, child's returncode %d, want -%d", r.Init, r.Child, syscall.SIGKILL)
	}
	for name, got := range r.Probe {
		// Host pids this low could exist in the sandbox's namespace too.
		if got != "ESRCH" && os.Getpid() > 100 && witness.p.Pid() > 100 {
			t.Errorf("probe of the %s's host pid from the sandbox: %s, want ESRCH", name, got)
		}
	}
	witness.checkAlive(t) // and this test process lives on
}

func TestBwrapEscapedDaemon(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	witness := startWitness(t, b)
	stopped := func(t *testing.T, k *kernel) {
		t.Helper()
		hb := filepath.Join(k.req.WorkDir, "heartbeat")
		before, _ := os.ReadFile(hb)
		time.Sleep(300 * time.Millisecond)
		after, _ := os.ReadFile(hb)
		if len(after) != len(before) {
			t.Errorf("the daemon still writes after its sandbox ended")
		}
	}
	// daemon launches daemon.py, its kernel staying for d, and returns the
	// kernel's uid once the daemon is started.
	daemon := func(t *testing.T, d time.Duration) (*kernel, int) {
		t.Helper()
		k := launchPy(t, b, lingering(hostile(t, "daemon.py", map[string]any{"heartbeat": "heartbeat"}), d))
		var r struct {
			UID    int
			Daemon string
		}
		k.results(t, 30*time.Second, &r)
		if r.Daemon != "started" {
			t.Fatalf("daemon: %+v\n%s", r, k.out)
		}
		return k, r.UID
	}
	t.Run("leader exits", func(t *testing.T) {
		k, uid := daemon(t, 500*time.Millisecond)
		if err := k.wait(t, 30*time.Second); err != nil {
			t.Fatalf("leader: %v", err)
		}
		if left := uidProcesses(t, uid); len(left) > 0 {
			t.Errorf("processes of uid %d outlive the kernel: %v", uid, left)
		}
		stopped(t, k)
	})
	t.Run("kill", func(t *testing.T) {
		k, uid := daemon(t, 120*time.Second)
		k.p.Kill()
		k.wait(t, 30*time.Second)
		if left := uidProcesses(t, uid); len(left) > 0 {
			t.Errorf("processes of uid %d survive Kill: %v", uid, left)
		}
		stopped(t, k)
	})
	t.Run("outer bwrap dies", func(t *testing.T) {
		k, uid := daemon(t, 120*time.Second)
		// Only the outer bwrap: --die-with-parent must take the rest.
		if err := syscall.Kill(k.p.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		k.wait(t, 30*time.Second)
		if left := uidProcesses(t, uid); len(left) > 0 {
			t.Errorf("processes of uid %d survive their bwrap: %v", uid, left)
		}
		stopped(t, k)
	})
	witness.checkAlive(t)
}

func TestBwrapSignals(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	t.Run("SIGINT", func(t *testing.T) {
		// "ready" inside the try: a SIGINT that comes right after it must land there.
		k := launchPy(t, b, `
import time
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
print("still running", flush=True)
`)
		k.waitFor(t, "ready", 30*time.Second)
		if err := k.p.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		k.waitFor(t, "still running", 10*time.Second)
		if err := k.wait(t, 10*time.Second); err != nil {
			t.Errorf("after interrupt: %v\n%s", err, k.out)
		}
		if !strings.Contains(k.out.String(), "KeyboardInterrupt") {
			t.Errorf("no KeyboardInterrupt:\n%s", k.out)
		}
	})
	t.Run("SIGTERM", func(t *testing.T) {
		k := launchPy(t, b, `import time; print("ready", flush=True); time.sleep(60)`)
		k.waitFor(t, "ready", 30*time.Second)
		if err := k.p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		err := k.wait(t, 10*time.Second)
		if err == nil || !strings.Contains(err.Error(), "terminated") {
			t.Errorf("SIGTERM: %v", err)
		}
		if err := k.p.Signal(syscall.SIGINT); !errors.Is(err, ErrExited) {
			t.Errorf("signal after exit: %v", err)
		}
	})
}

func TestBwrapLifespan(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, func(c *Config) { c.Lifespan = time.Second })
	k := launchPy(t, b, "import time; time.sleep(60)")
	if err := k.wait(t, 30*time.Second); !errors.Is(err, ErrLifespan) {
		t.Errorf("sleeper ended with %v, want ErrLifespan", err)
	}
}

func TestBwrapRestartAndClose(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	run, work := newDirs(t)
	conn := filepath.Join(run, "kernel.json")
	if err := os.WriteFile(conn, []byte(`{"first": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	req := Request{RuntimeDir: run, WorkDir: work}
	req.Argv = []string{"/usr/bin/python3", "-c", `
import os
print(open(os.environ["CONN"]).read())
open("a.txt", "w").write("kept")
print("uid", os.getuid(), flush=True)
`}
	req.Env = []string{"CONN=" + conn}
	k1 := launchIn(t, b, req)
	uid := uidOf(t, k1)
	if err := k1.wait(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(k1.out.String(), `{"first": true}`) {
		t.Errorf("connection file not carried into the sandbox:\n%s", k1.out)
	}
	if entries, _ := os.ReadDir(run); len(entries) != 0 {
		t.Errorf("runtime dir not emptied when the kernel ended: %v", entries)
	}
	// The pool writes a new connection file and launches again.
	if err := os.WriteFile(conn, []byte(`{"second": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	req.Argv = []string{"/usr/bin/python3", "-c", `
import os, time
print(open(os.environ["CONN"]).read(), open("a.txt").read())
print("uid", os.getuid(), flush=True)
time.sleep(60)
`}
	k2 := launchIn(t, b, req)
	if got := uidOf(t, k2); got != uid {
		t.Errorf("restart got uid %d, want the first kernel's %d", got, uid)
	}
	k2.waitFor(t, `{"second": true} kept`, 10*time.Second)
	if _, err := b.Launch(context.Background(), req); !errors.Is(err, ErrBusy) {
		t.Errorf("launch over a running kernel: %v, want ErrBusy", err)
	}
	if err := k1.p.Close(); err != nil {
		t.Errorf("closing the replaced process: %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "a.txt")); err != nil {
		t.Errorf("closing the replaced process released the new one's files: %v", err)
	}
	if err := k2.p.Close(); err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	for _, d := range []string{run, work} {
		if err := syscall.Statfs(d, &st); err != nil || st.Type == tmpfsMagic {
			t.Errorf("%s still covered after Close: type %x, %v", d, st.Type, err)
		}
	}
	if err := os.RemoveAll(work); err != nil {
		t.Errorf("pool cannot remove WorkDir after Close: %v", err)
	}
	// Whether this launcher let the uid go, not whether its lock is free: the lock files are
	// shared by every launcher on the host (parallel tests, other test binaries), and another
	// may take the uid the moment it is free.
	b.uids.mu.Lock()
	held := b.uids.held[uid]
	b.uids.mu.Unlock()
	if held != nil {
		t.Errorf("uid %d still held after Close", uid)
	}
}

func TestNewBwrapRejects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("NewBwrap needs root")
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"accounts in range", func(c *Config) { c.UIDBase, c.UIDCount = 1, 10 }, "/etc/passwd"},
		{"nobody in range", func(c *Config) { c.UIDBase, c.UIDCount = 65000, 1000 }, "nobody"},
		{"zero memory", func(c *Config) { c.Memory = 0 }, "Memory"},
		{"relative state dir", func(c *Config) { c.StateDir = "state" }, "StateDir"},
		{"short cpu", func(c *Config) { c.CPUTime = time.Millisecond }, "CPUTime"},
		{"no forks per template", func(c *Config) { c.Fork, c.ForkMax = true, 0 }, "ForkMax"},
		{"no bwrap", func(c *Config) { c.BwrapPath = "/nonexistent/bwrap" }, "/nonexistent/bwrap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.change(&cfg)
			_, err := NewBwrap(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewBwrap: %v, want an error about %s", err, tc.want)
			}
		})
	}
}

// TestBwrapGatewayDeath kills a gateway stand-in (this test binary, run
// again as TestHelperGateway) with SIGKILL: its kernels must die with it,
// and the next NewBwrap must clear the mounts it left behind.
// gatewayDeathConfig gives TestBwrapGatewayDeath's gateways a state dir
// and uid range of their own: any other NewBwrap running meanwhile (other
// tests, other packages) would otherwise sweep the dead gateway's leftovers
// before the test looks, and the uids must not be another test's.
// The state dir must be passable by the kernel's uid, which the test's
// temporary directory (0700) is not.
func gatewayDeathConfig(base string) func(*Config) {
	return func(c *Config) {
		c.StateDir = filepath.Join(os.TempDir(), "cg-gwdeath-"+filepath.Base(filepath.Dir(base)))
		c.UIDBase, c.UIDCount = 72000, 8
	}
}

func TestBwrapGatewayDeath(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	newBwrap(t, gatewayDeathConfig(base)) // skips where the sandbox cannot run
	var state Config
	gatewayDeathConfig(base)(&state)
	t.Cleanup(func() { os.RemoveAll(state.StateDir) })
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperGateway$", "-test.v")
	cmd.Env = append(os.Environ(), "CELLGATE_SANDBOX_HELPER="+base)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "kernel uid ") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("helper gateway did not start a kernel:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, rest, _ := strings.Cut(out.String(), "kernel uid ")
	uid, err := strconv.Atoi(strings.Fields(rest)[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(uidProcesses(t, uid)) == 0 {
		t.Fatalf("no process of uid %d", uid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	for len(uidProcesses(t, uid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("processes of uid %d outlive their gateway: %v", uid, uidProcesses(t, uid))
		}
		time.Sleep(20 * time.Millisecond)
	}
	work := filepath.Join(base, "work")
	var st syscall.Statfs_t
	if err := syscall.Statfs(work, &st); err != nil || st.Type != tmpfsMagic {
		t.Fatalf("expected the dead gateway's tmpfs on %s: type %x, %v", work, st.Type, err)
	}
	newBwrap(t, gatewayDeathConfig(base))
	if err := syscall.Statfs(work, &st); err != nil || st.Type == tmpfsMagic {
		t.Errorf("NewBwrap left a dead gateway's tmpfs on %s: %v", work, err)
	}
}

func TestHelperGateway(t *testing.T) {
	base := os.Getenv("CELLGATE_SANDBOX_HELPER")
	if base == "" {
		t.Skip("helper process of TestBwrapGatewayDeath")
	}
	b := newBwrap(t, gatewayDeathConfig(base))
	run, work := filepath.Join(base, "run"), filepath.Join(base, "work")
	for _, d := range []string{run, work} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	k := launchIn(t, b, Request{
		Argv:       []string{"/usr/bin/python3", "-c", `import os, time; print("kernel uid", os.getuid(), flush=True); time.sleep(120)`},
		RuntimeDir: run, WorkDir: work,
	})
	k.waitFor(t, "kernel uid", 30*time.Second)
	fmt.Println(strings.TrimSpace(k.out.String()))
	time.Sleep(2 * time.Minute)
}

func TestBwrapNoFreeUID(t *testing.T) {
	t.Parallel()
	// A range of its own: other tests use the default one.
	b := newBwrap(t, func(c *Config) { c.UIDBase, c.UIDCount = 71500, 1 })
	k := launchPy(t, b, `import time; print("ready", flush=True); time.sleep(60)`)
	k.waitFor(t, "ready", 30*time.Second)
	run, work := newDirs(t)
	_, err := b.Launch(context.Background(), Request{Argv: []string{"/usr/bin/true"}, RuntimeDir: run, WorkDir: work})
	if !errors.Is(err, ErrNoUID) {
		t.Errorf("launch with every uid taken: %v, want ErrNoUID", err)
	}
	if err := k.p.Close(); err != nil {
		t.Fatal(err)
	}
	k2 := launchIn(t, b, Request{Argv: []string{"/usr/bin/true"}, RuntimeDir: run, WorkDir: work})
	if err := k2.wait(t, 30*time.Second); err != nil {
		t.Errorf("launch after Close freed the uid: %v", err)
	}
}

// writeConnection writes an ipc connection file the way the pool does:
// sockets <RuntimeDir>/sock-1..5, heartbeat on sock-5.
func writeConnection(t *testing.T, runtimeDir string) string {
	return writeConnectionKey(t, runtimeDir, "0123456789abcdef")
}

// writeConnectionKey is writeConnection with the HMAC key given.
func writeConnectionKey(t *testing.T, runtimeDir, key string) string {
	t.Helper()
	conn := filepath.Join(runtimeDir, "kernel.json")
	data := fmt.Sprintf(`{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
"ip": %q, "key": %q, "transport": "ipc", "signature_scheme": "hmac-sha256", "kernel_name": "test"}`,
		filepath.Join(runtimeDir, "sock"), key)
	if err := os.WriteFile(conn, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return conn
}

// waitSockets waits until the kernel has bound its five sockets
// (writeConnection's) in its RuntimeDir. jupyter_client, run on a kernel
// still starting, takes a heartbeat missing for a second for a dead kernel
// ("Kernel died before replying to kernel_info"), as happens on a loaded
// machine: the tests that use it wait here first.
func (k *kernel) waitSockets(t *testing.T, startup time.Duration) {
	t.Helper()
	deadline := time.Now().Add(startup)
	for n := 1; n <= 5; {
		st, err := os.Stat(filepath.Join(k.req.RuntimeDir, fmt.Sprintf("sock-%d", n)))
		if err == nil && st.Mode()&os.ModeSocket != 0 {
			n++
			continue
		}
		select {
		case <-k.p.Done():
			t.Fatalf("kernel ended before binding sock-%d: %v\n%s", n, k.p.Err(), k.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sock-%d after %v:\n%s", n, startup, k.out)
		}
	}
}

// heartbeatScript pings a kernel's heartbeat socket from outside the
// sandbox (the gateway's side of the ipc path).
const heartbeatScript = `
import sys, zmq
s = zmq.Context().socket(zmq.REQ)
s.setsockopt(zmq.LINGER, 0)
s.connect("ipc://" + sys.argv[1])
s.send(b"ping")
if not s.poll(10000):
    sys.exit("no heartbeat reply")
print(s.recv().decode())
`

// executeScript runs code in a kernel from outside the sandbox with
// jupyter_client (the ZMQ side proper is the pool's), and prints what the
// kernel printed.
const executeScript = `
import sys, jupyter_client
kc = jupyter_client.BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
    elif msg["msg_type"] == "error":
        out.append("\n".join(msg["content"]["traceback"]))
def busy_hook(msg):
    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
        print("busy", flush=True)
    hook(msg)
reply = kc.execute_interactive(sys.argv[2], timeout=120, output_hook=busy_hook)
print("".join(out))
print("status:", reply["content"]["status"], reply["content"].get("ename", ""))
`

// testKernel starts argv (a Jupyter kernel) sandboxed and checks that it
// binds its five sockets where the gateway expects them, and that the
// heartbeat answers through them from outside.
func testKernel(t *testing.T, b *Bwrap, startup time.Duration, code, want, file string, argv ...string) {
	run, work := newDirs(t)
	conn := writeConnection(t, run)
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{connection_file}", conn)
	}
	k := launchIn(t, b, Request{Argv: argv, RuntimeDir: run, WorkDir: work})
	k.waitSockets(t, startup)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", heartbeatScript, filepath.Join(run, "sock-5")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ping" {
		t.Errorf("heartbeat through the ipc socket: %v: %s\nkernel output:\n%s", err, out, k.out)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err = exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, conn, code).CombinedOutput()
	if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "status: ok") {
		t.Errorf("execute %q: %v: %s\nkernel output:\n%s", code, err, out, k.out)
	}
	if st, err := os.Stat(filepath.Join(work, file)); err != nil || st.Size() == 0 {
		t.Errorf("the kernel's %s is not in WorkDir: %v", file, err)
	}
	// An interrupt reaches the kernel's code while it runs.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, conn, "import time\ntime.sleep(60)")
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(buf.String(), "busy") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // from busy to inside time.sleep
	if err := k.p.Signal(syscall.SIGINT); err != nil {
		t.Error(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(buf.String(), "status: error KeyboardInterrupt") {
		t.Errorf("interrupting a running cell: %v: %s\nkernel output:\n%s", err, buf.String(), k.out)
	}
	// An idle kernel ignores SIGINT; it must still be there afterwards.
	if err := k.p.Signal(syscall.SIGINT); err != nil {
		t.Error(err)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-k.p.Done():
		t.Errorf("kernel died of SIGINT: %v\n%s", k.p.Err(), k.out)
	default:
	}
}

func TestBwrapIPyKernel(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/lib/python3/dist-packages/ipykernel_launcher.py"); err != nil {
		t.Skipf("python3-ipykernel is not installed: %v", err)
	}
	b := newBwrap(t, nil)
	code := "import numpy, matplotlib.pyplot as plt\nplt.plot(numpy.arange(10))\nplt.savefig('plot.png')\nprint('sum', numpy.arange(10).sum())"
	testKernel(t, b, time.Minute, code, "sum 45", "plot.png", "/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}")
}

func TestBwrapSageKernel(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/bin/sage"); err != nil {
		t.Skipf("sagemath-jupyter is not installed: %v", err)
	}
	// Cold: TestForkedSageKernels has forked ones.
	b := newBwrap(t, func(c *Config) { c.Fork = false })
	code := "print(factor(2^64 + 1))\nplot(sin(x), (x, 0, 6)).save('sine.png')"
	testKernel(t, b, 3*time.Minute, code, "274177 * 67280421310721", "sine.png", "/usr/bin/sage", "--python", "-m", "sage.repl.ipython_kernel", "-f", "{connection_file}")
}
