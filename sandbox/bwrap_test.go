package sandbox

import (
	"context"
	"encoding/json"
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

// identityScript reports who the kernel is and what it may do.
const identityScript = `
import ctypes, json, os, pwd
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
libc = ctypes.CDLL(None, use_errno=True)
userns = libc.unshare(0x10000000)  # CLONE_NEWUSER
libc.syscall.restype = ctypes.c_long
def syscall(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r if r >= 0 else -ctypes.get_errno()
denied = [syscall(int(nr), 0, 0, 0) for nr in os.environ["DENIED"].split()]
getpid = syscall(int(os.environ["GETPID"]))
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "name": pwd.getpwuid(os.getuid()).pw_name, "home": os.environ.get("HOME"), "cwd": os.getcwd(),
    "capeff": status["CapEff"].strip(), "capbnd": status["CapBnd"].strip(),
    "nonewprivs": status["NoNewPrivs"].strip(), "userns": userns,
    "seccomp": status["Seccomp"].strip(), "denied": denied, "getpid": getpid,
    "env": sorted(k for k in os.environ),
}))
`

type identity struct {
	UID, EUID, GID int
	Groups         []int
	Name, Home     string
	CWD            string
	CapEff         string
	CapBnd         string
	NoNewPrivs     string
	UserNS         int
	Seccomp        string
	Denied         []int
	GetPid         int
	Env            []string
}

// identityEnv names the syscalls the identity script tries: the denied
// ones (and, on x86_64, getpid by its x32 number), then getpid.
func identityEnv() []string {
	var denied []string
	for _, nr := range deniedSyscalls {
		denied = append(denied, strconv.Itoa(int(nr)))
	}
	if runtime.GOARCH == "amd64" {
		denied = append(denied, strconv.Itoa(0x40000000|unix.SYS_GETPID))
	}
	return []string{"DENIED=" + strings.Join(denied, " "), "GETPID=" + strconv.Itoa(unix.SYS_GETPID)}
}

func TestBwrapIdentity(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	k1 := launchPy(t, b, identityScript, identityEnv()...)
	k2 := launchPy(t, b, identityScript, identityEnv()...)
	var id1, id2 identity
	k1.result(t, &id1)
	k2.result(t, &id2)
	cfg := b.Config()
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
		if id.CapEff != "0000000000000000" || id.CapBnd != "0000000000000000" {
			t.Errorf("capabilities: effective %s bounding %s", id.CapEff, id.CapBnd)
		}
		if id.NoNewPrivs != "1" {
			t.Errorf("no_new_privs is %s", id.NoNewPrivs)
		}
		if id.UserNS != -1 {
			t.Errorf("kernel could create a user namespace")
		}
		if seccompFilter() != nil {
			if want := len(strings.Fields(identityEnv()[0])); len(id.Denied) != want {
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
		if id.Name != "sandbox" || id.Home != cfg.Home {
			t.Errorf("user %q home %q", id.Name, id.Home)
		}
		for _, e := range id.Env {
			if strings.Contains(e, "SSL") || strings.Contains(e, "GO") || strings.Contains(e, "CELLGATE") {
				t.Errorf("gateway environment leaked: %s", e)
			}
		}
	}
	if id1.UID == id2.UID {
		t.Errorf("two live kernels share uid %d", id1.UID)
	}
	if id1.CWD != k1.req.WorkDir {
		t.Errorf("cwd %s, want WorkDir %s", id1.CWD, k1.req.WorkDir)
	}
}

// filesScript probes what of the host the kernel can reach, prints its
// findings, plants symlinks for the gateway to trip over, and waits.
const filesScript = `
import json, os
def exists(p):
    return os.path.lexists(p)
def read(p):
    try:
        with open(p, "rb") as f:
            f.read(1)
        return "read"
    except OSError as e:
        return e.errno
def listdir(p):
    try:
        return sorted(os.listdir(p))
    except OSError as e:
        return e.errno
def write(p):
    try:
        with open(p, "w") as f:
            f.write("x")
        return "written"
    except OSError as e:
        return e.errno
home = os.environ["HOME"]
r = {
    "shadow": read("/etc/shadow"), "root": exists("/root"), "work": exists("/work"),
    "sibling": [exists(os.environ["SIBLING_WORK"]), exists(os.environ["SIBLING_RUN"])],
    "marker": exists(os.environ["HOST_MARKER"]), "sys": exists("/sys/class/net"),
    "etc": listdir("/etc"), "top": listdir("/"),
    "proc": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
    "denied": [write(p) for p in ("/usr/x", "/etc/x", "/x", "/dev/x", "/proc/x", "/etc/passwd")],
    "allowed": [write(p) for p in ("out.txt", "/tmp/x", home + "/x", "/dev/shm/x", "/var/tmp/y")],
}
os.symlink("/etc/hostname", "link")
os.symlink("/etc/hostname", os.path.join(os.environ["RUNTIME"], "link"))
print(json.dumps(r), flush=True)
print("DONE", flush=True)
import time
time.sleep(120)
`

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
	k := launchIn(t, b, Request{
		Argv: []string{"/usr/bin/python3", "-c", filesScript},
		Env: []string{
			"SIBLING_WORK=" + sibling.req.WorkDir, "SIBLING_RUN=" + sibling.req.RuntimeDir,
			"HOST_MARKER=" + marker.Name(), "RUNTIME=" + run,
		},
		RuntimeDir: run, WorkDir: work,
	})
	k.waitFor(t, "DONE", 30*time.Second)
	var r struct {
		Shadow  any
		Root    bool
		Work    bool
		Sibling []bool
		Marker  bool
		Sys     bool
		Etc     []string
		Top     []string
		Proc    []int
		FDs     []int
		Denied  []any
		Allowed []any
	}
	line, _, _ := strings.Cut(k.out.String(), "\nDONE")
	if err := json.Unmarshal([]byte(line[strings.LastIndex(line, "\n")+1:]), &r); err != nil {
		t.Fatalf("%v\n%s", err, k.out)
	}
	if r.Shadow != float64(syscall.ENOENT) || r.Root || r.Work || r.Marker || r.Sys {
		t.Errorf("host paths visible: shadow %v, /root %v, /work %v, host /tmp %v, /sys %v", r.Shadow, r.Root, r.Work, r.Marker, r.Sys)
	}
	if r.Sibling[0] || r.Sibling[1] {
		t.Errorf("a sibling kernel's directories are visible: %v", r.Sibling)
	}
	for _, e := range r.Etc {
		if strings.Contains(e, "shadow") || e == "sudoers" || e == "ssl" || e == "ssh" {
			t.Errorf("/etc/%s is visible", e)
		}
	}
	if wantTop := sandboxTop(b.cfg, run, work); !slices.Equal(r.Top, wantTop) {
		t.Errorf("top level %v, want %v", r.Top, wantTop)
	}
	if len(r.Proc) > 2 || slices.Max(r.Proc) > 10 {
		t.Errorf("/proc shows processes %v: more than the sandbox's init and kernel", r.Proc)
	}
	if !slices.Equal(r.FDs, []int{0, 1, 2, 3}) { // 3: the listing's own
		t.Errorf("kernel inherited descriptors: %v", r.FDs)
	}
	for i, d := range r.Denied {
		if d == "written" {
			t.Errorf("write %d succeeded where it must not", i)
		}
	}
	for i, a := range r.Allowed {
		if a != "written" {
			t.Errorf("write %d to a private dir failed: %v", i, a)
		}
	}
	// The gateway sees the kernel's files where it expects them, and the
	// kernel's symlinks do not lead it elsewhere.
	if data, err := os.ReadFile(filepath.Join(work, "out.txt")); err != nil || string(data) != "x" {
		t.Errorf("kernel's file on the host: %q, %v", data, err)
	}
	for _, link := range []string{filepath.Join(work, "link"), filepath.Join(run, "link")} {
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

// netScript reports the kernel's network: interfaces, and whether it
// reaches a TCP port and an abstract unix socket the test listens on in
// the host's namespace.
const netScript = `
import json, os, socket
r = {"ifaces": [name for _, name in socket.if_nameindex()]}
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(os.environ["PORT"])))
    r["tcp"] = "connected"
except OSError as e:
    r["tcp"] = e.errno
u = socket.socket(socket.AF_UNIX)
try:
    u.connect("\0" + os.environ["ABSTRACT"])
    r["abstract"] = "connected"
except OSError as e:
    r["abstract"] = e.errno
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
c = socket.create_connection(srv.getsockname(), timeout=5)
r["own"] = "connected"
print(json.dumps(r))
`

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
	k := launchPy(t, b, netScript, "PORT="+port, "ABSTRACT="+abstract)
	var r struct {
		Ifaces   []string
		TCP      any
		Abstract any
		Own      string
	}
	k.result(t, &r)
	if !slices.Equal(r.Ifaces, []string{"lo"}) {
		t.Errorf("interfaces %v, want only lo", r.Ifaces)
	}
	if r.TCP != float64(syscall.ECONNREFUSED) || r.Abstract != float64(syscall.ECONNREFUSED) {
		t.Errorf("kernel reached the host: tcp %v, abstract unix %v", r.TCP, r.Abstract)
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

const forkBombScript = `
import os, time
print("uid", os.getuid(), flush=True)
n = 0
try:
    while True:
        if os.fork() == 0:
            while True:  # every child forks on, as a real bomb does
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.05)
        n += 1
except OSError as e:
    print("fork failed", e.errno, "after", n, flush=True)
time.sleep(120)
`

func TestBwrapForkBomb(t *testing.T) {
	t.Parallel()
	const limit = 30
	b := newBwrap(t, func(c *Config) { c.Processes = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, forkBombScript)
	uid := uidOf(t, k)
	k.waitFor(t, "fork failed", 30*time.Second)
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
	k := launchPy(t, b, "while True: pass")
	err := k.wait(t, time.Minute)
	if !errors.Is(err, ErrCPULimit) {
		t.Errorf("busy loop ended with %v, want ErrCPULimit\n%s", err, k.out)
	}
	witness.checkAlive(t)
}

const memoryScript = `
import json, os
limit = int(os.environ["LIMIT"])
r = {}
try:
    big = bytearray(10 * limit)
    r["big"] = "allocated"
except MemoryError:
    r["big"] = "MemoryError"
chunks = []
try:
    while True:
        chunks.append(bytearray(16 << 20))
except MemoryError:
    r["grew"] = len(chunks) * (16 << 20)
del chunks
print(json.dumps(r))
`

func TestBwrapMemoryLimit(t *testing.T) {
	t.Parallel()
	const limit = 512 << 20
	b := newBwrap(t, func(c *Config) { c.Memory = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, memoryScript, "LIMIT="+strconv.Itoa(limit))
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

const diskScript = `
import json, os
r = {}
try:
    with open("big", "wb") as f:
        for i in range(8):
            f.write(b"\0" * (256 << 10))
    r["fsize"] = "written"
except OSError as e:
    r["fsize"] = e.errno
os.remove("big")
n = 0
try:
    while True:
        for d in (".", "/tmp", os.environ["HOME"], "/dev/shm"):
            with open(os.path.join(d, "f%d" % n), "wb") as f:
                f.write(b"\0" * (256 << 10))
            n += 1
except OSError as e:
    r["fill"] = e.errno
r["filled"] = n * (256 << 10)
for d in (".", "/tmp", os.environ["HOME"], "/dev/shm"):
    for name in os.listdir(d):
        if os.path.isfile(os.path.join(d, name)):  # /tmp may hold the way to WorkDir
            os.remove(os.path.join(d, name))
m = 0
try:
    while True:
        open("e%d" % m, "w").close()
        m += 1
except OSError as e:
    r["inodes"] = e.errno
r["files"] = m
print(json.dumps(r))
`

func TestBwrapDiskLimit(t *testing.T) {
	t.Parallel()
	const disk, inodes, fsize = 4 << 20, 500, 1 << 20
	b := newBwrap(t, func(c *Config) { c.Disk, c.Inodes, c.FileSize = disk, inodes, fsize })
	witness := startWitness(t, b)
	k := launchPy(t, b, diskScript)
	var r struct {
		FSize  any
		Fill   int
		Filled int
		Inodes int
		Files  int
	}
	k.result(t, &r)
	if r.FSize != float64(syscall.EFBIG) {
		t.Errorf("writing past FileSize: %v, want EFBIG", r.FSize)
	}
	if r.Fill != int(syscall.ENOSPC) || r.Filled > disk {
		t.Errorf("filling the disk: errno %d after %d bytes (limit %d)", r.Fill, r.Filled, disk)
	}
	if r.Inodes != int(syscall.ENOSPC) || r.Files > inodes {
		t.Errorf("creating files: errno %d after %d (limit %d)", r.Inodes, r.Files, inodes)
	}
	witness.checkAlive(t)
}

func TestBwrapOpenFiles(t *testing.T) {
	t.Parallel()
	const limit = 64
	b := newBwrap(t, func(c *Config) { c.OpenFiles = limit })
	witness := startWitness(t, b)
	k := launchPy(t, b, `
import json
fs = []
try:
    while True:
        fs.append(open("/dev/null"))
except OSError as e:
    print(json.dumps({"errno": e.errno, "n": len(fs)}))
`)
	var r struct{ Errno, N int }
	k.result(t, &r)
	if r.Errno != int(syscall.EMFILE) || r.N >= limit {
		t.Errorf("opening files: errno %d after %d (limit %d)", r.Errno, r.N, limit)
	}
	witness.checkAlive(t)
}

const killAllScript = `
import json, os, signal, time
print("uid", os.getuid(), flush=True)
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
r = {}
try:
    os.kill(1, signal.SIGKILL)
    r["kill1"] = "sent"
except OSError as e:
    r["kill1"] = e.errno
try:
    os.kill(os.getppid(), signal.SIGKILL)
except OSError:
    pass
time.sleep(0.2)
r["init"] = os.path.exists("/proc/1")
os.kill(-1, signal.SIGKILL)
_, status = os.waitpid(child, 0)
r["child"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1
print(json.dumps(r))
`

func TestBwrapKillEverything(t *testing.T) {
	t.Parallel()
	b := newBwrap(t, nil)
	witness := startWitness(t, b)
	k := launchPy(t, b, killAllScript)
	var r struct {
		Init  bool
		Child int
	}
	k.result(t, &r)
	if !r.Init || r.Child != int(syscall.SIGKILL) {
		t.Errorf("inside: sandbox init alive %v, child killed by %d", r.Init, r.Child)
	}
	witness.checkAlive(t) // and this test process lives on
}

const daemonScript = `
import os, time
print("uid", os.getuid(), flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open("heartbeat", "a") as f:
                f.write(".")
            time.sleep(0.05)
    os._exit(0)
print("daemon started", flush=True)
time.sleep(float(os.environ["STAY"]))
`

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
	t.Run("leader exits", func(t *testing.T) {
		k := launchPy(t, b, daemonScript, "STAY=0.5")
		uid := uidOf(t, k)
		if err := k.wait(t, 30*time.Second); err != nil {
			t.Fatalf("leader: %v", err)
		}
		if left := uidProcesses(t, uid); len(left) > 0 {
			t.Errorf("processes of uid %d outlive the kernel: %v", uid, left)
		}
		stopped(t, k)
	})
	t.Run("kill", func(t *testing.T) {
		k := launchPy(t, b, daemonScript, "STAY=120")
		uid := uidOf(t, k)
		k.waitFor(t, "daemon started", 30*time.Second)
		k.p.Kill()
		k.wait(t, 30*time.Second)
		if left := uidProcesses(t, uid); len(left) > 0 {
			t.Errorf("processes of uid %d survive Kill: %v", uid, left)
		}
		stopped(t, k)
	})
	t.Run("outer bwrap dies", func(t *testing.T) {
		k := launchPy(t, b, daemonScript, "STAY=120")
		uid := uidOf(t, k)
		k.waitFor(t, "daemon started", 30*time.Second)
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
		k := launchPy(t, b, `
import time
print("ready", flush=True)
try:
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
	f, err := b.uids.tryLock(uid)
	if err != nil || f == nil {
		t.Errorf("uid %d still locked after Close (%v)", uid, err)
	} else {
		f.Close()
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
func TestBwrapGatewayDeath(t *testing.T) {
	t.Parallel()
	newBwrap(t, nil) // skips where the sandbox cannot run
	base := t.TempDir()
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
	newBwrap(t, nil)
	if err := syscall.Statfs(work, &st); err != nil || st.Type == tmpfsMagic {
		t.Errorf("NewBwrap left a dead gateway's tmpfs on %s: %v", work, err)
	}
}

func TestHelperGateway(t *testing.T) {
	base := os.Getenv("CELLGATE_SANDBOX_HELPER")
	if base == "" {
		t.Skip("helper process of TestBwrapGatewayDeath")
	}
	b := newBwrap(t, nil)
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
	t.Helper()
	conn := filepath.Join(runtimeDir, "kernel.json")
	data := fmt.Sprintf(`{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
"ip": %q, "key": "0123456789abcdef", "transport": "ipc", "signature_scheme": "hmac-sha256", "kernel_name": "test"}`,
		filepath.Join(runtimeDir, "sock"))
	if err := os.WriteFile(conn, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return conn
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
	deadline := time.Now().Add(startup)
	for n := 1; n <= 5; {
		st, err := os.Stat(filepath.Join(run, fmt.Sprintf("sock-%d", n)))
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
	b := newBwrap(t, nil)
	code := "print(factor(2^64 + 1))\nplot(sin(x), (x, 0, 6)).save('sine.png')"
	testKernel(t, b, 3*time.Minute, code, "274177 * 67280421310721", "sine.png", "/usr/bin/sage", "--python", "-m", "sage.repl.ipython_kernel", "-f", "{connection_file}")
}
