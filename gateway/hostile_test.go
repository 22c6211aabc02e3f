package gateway

// Hostile-code tests through the whole server: real ipykernel kernels,
// leased from the real pool, sandboxed by the real bwrap launcher, driven
// through the Sage-cell websocket and /service, with storage on. Each
// attack must fail, and the gateway, a concurrent bystander session and
// new sessions must carry on. The sandbox package runs the same payloads
// (testdata/hostile at the repository's root, read through hostileCode)
// one level down, as python -c scripts.
//
// They need root and bubblewrap, and skip without them. No traffic leaves
// 127.0.0.1: the network checks read the kernel's interface list and
// connect only to the gateway's and the database's loopback ports.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/storage"
)

// Sandbox limits of the hostile tests: small, so that attacks hit them
// fast, and enough for ipykernel (about 750 MiB of address space at rest,
// most of it thread stacks and malloc arenas, and 0.4 s of CPU to start
// and warm up, more on a loaded machine: the CPU limit leaves room for
// that and for the memory test's page faults).
const (
	hostileCPU       = 5 * time.Second
	hostileMemory    = 1 << 30
	hostileDisk      = 16 << 20
	hostileInodes    = 2048
	hostileFileSize  = 4 << 20
	hostileProcesses = 64
	hostileOpenFiles = 256
	// A uid range of their own, away from the default one other test
	// binaries on this host use, so that "no process of this uid is
	// left" cannot see another binary's new kernel under a reused uid.
	hostileUIDBase  = 71000
	hostileUIDCount = 200
)

// requireBwrap skips unless the real sandbox can run here.
func requireBwrap(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs hostile code in real sandboxed kernels: slow; make test runs it")
	}
	if os.Geteuid() != 0 {
		t.Skip("hostile-code tests need root: the bwrap sandbox switches kernels to their own uids and mounts their tmpfs")
	}
	if _, err := os.Stat(sandbox.DefaultConfig().BwrapPath); err != nil {
		t.Skipf("hostile-code tests need bubblewrap (%v): make deps installs it", err)
	}
}

func hostileSandboxConfig() sandbox.Config {
	cfg := sandbox.DefaultConfig()
	cfg.UIDBase, cfg.UIDCount = hostileUIDBase, hostileUIDCount
	cfg.CPUTime = hostileCPU
	cfg.Memory = hostileMemory
	cfg.Disk, cfg.Inodes = hostileDisk, hostileInodes
	cfg.FileSize = hostileFileSize
	cfg.Processes = hostileProcesses
	cfg.OpenFiles = hostileOpenFiles
	// A backstop only: a test gone wrong leaves nothing running for long.
	cfg.Lifespan = 5 * time.Minute
	return cfg
}

func newHostileLauncher(t *testing.T, change func(*sandbox.Config)) *sandbox.Bwrap {
	t.Helper()
	cfg := hostileSandboxConfig()
	if change != nil {
		change(&cfg)
	}
	b, err := sandbox.NewBwrap(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startTCPStorage is startTestStorage with the embedded database on a
// loopback TCP port rather than its unix socket: what a kernel would try
// to reach when the operator's MongoDB listens on 127.0.0.1.
func startTCPStorage(t *testing.T, dir string) (*testStorage, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	emb, err := storage.StartEmbedded(ctx, storage.EmbeddedConfig{Dir: dir, Addr: "127.0.0.1:0", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(emb.URI())
	if err != nil || u.Port() == "" {
		_ = emb.Close()
		t.Fatalf("embedded database URI %q: %v", emb.URI(), err)
	}
	store, err := storage.Open(ctx, storage.Config{URI: emb.URI(), Logger: log, ServerSelectionTimeout: time.Second, ConnectRetry: 30 * time.Second, Embedded: emb})
	if err != nil {
		_ = emb.Close()
		t.Fatal(err)
	}
	q := storage.NewQueue(context.Background(), store.Permalinks(), storage.QueueConfig{Logger: log, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ts := &testStorage{dir: dir, embedded: emb, store: store, queue: q}
	t.Cleanup(func() { ts.stop(t) })
	return ts, u.Port()
}

// hostileEnv is one gateway over the bwrap sandbox, with storage, things
// worth stealing, and a bystander session that must not notice anything.
type hostileEnv struct {
	*testEnv
	launcher  *sandbox.Bwrap
	ts        *testStorage
	dbPort    string
	gwPort    string
	root      string // the pool's RuntimeRoot and WorkRoot are root/r, root/w
	secret    string // a token the kernels must never see
	secretDir string // the test's own temp dir
	hostUnix  string // a unix socket of the "host" in secretDir
	abstract  string // an abstract unix socket name in the host's network namespace

	byID      string
	byClient  *wsClient
	byWorkDir string
	byRunDir  string
	bySocket  string // one of the bystander kernel's ipc sockets
}

// newHostileEnv starts the gateway with ready prewarmed kernels and the
// bystander session; change (may be nil) tunes the sandbox.
func newHostileEnv(t *testing.T, change func(*sandbox.Config)) *hostileEnv {
	t.Helper()
	h := &hostileEnv{secret: "cellgate-hostile-" + randomHex(8), secretDir: t.TempDir()}
	// What the gateway's configuration could hold: nothing of it may reach
	// a kernel's environment.
	t.Setenv("CELLGATE_TOKEN", h.secret)
	t.Setenv("CELLGATE_MONGO_URI", "mongodb://admin:"+h.secret+"@127.0.0.1/")
	if err := os.WriteFile(filepath.Join(h.secretDir, "secret.txt"), []byte(h.secret), 0o644); err != nil {
		t.Fatal(err)
	}
	// Readable by anyone on the host: only the sandbox keeps kernels out.
	if err := os.Chmod(h.secretDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.ts, h.dbPort = startTCPStorage(t, filepath.Join(t.TempDir(), "db"))
	launcher := newHostileLauncher(t, change)
	t.Cleanup(launcher.Close)
	h.launcher = launcher
	h.testEnv = newTestEnvWith(t, 2, 8, func(c *Config) {
		c.Storage = h.ts.gateway()
		c.Storage.UploadTimeout = 10 * time.Second
	}, func(k *kernelpool.KernelConfig) {
		k.Launcher = launcher
	})
	u, _ := url.Parse(h.http.URL)
	h.gwPort = u.Port()
	// Host sockets a kernel must not reach: one by path, one abstract.
	h.hostUnix = filepath.Join(h.secretDir, "host.sock")
	for _, addr := range []string{h.hostUnix, "@cellgate-hostile-" + randomHex(8)} {
		l, err := net.Listen("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if strings.HasPrefix(addr, "@") {
			h.abstract = addr[1:]
		}
	}

	by := h.newKernel(url.Values{"timeout": {"600"}})
	h.byID = by.ID
	h.byClient = h.dialSage(by.ID, "")
	sess := h.gw.sessions.get(by.ID)
	h.byWorkDir = sess.Kernel().WorkDir
	h.root = filepath.Dir(filepath.Dir(h.byWorkDir))
	h.byRunDir = filepath.Join(h.root, "r", by.ID)
	frames := replyAndIdle(h.byClient, h.byClient.execute("open('bystander-secret.txt', 'w').write("+pyStr(h.secret)+")\nprint(1+1)"))
	if got := streamText(frames); got != "2\n" {
		t.Fatalf("bystander: %q", got)
	}
	if data, err := os.ReadFile(filepath.Join(h.byWorkDir, "bystander-secret.txt")); err != nil || string(data) != h.secret {
		t.Fatalf("the bystander's file is not in its WorkDir: %q %v", data, err)
	}
	entries, err := os.ReadDir(h.byRunDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			h.bySocket = filepath.Join(h.byRunDir, e.Name())
			break
		}
	}
	if h.bySocket == "" {
		t.Fatalf("no ipc socket in the bystander's runtime dir %s: %v", h.byRunDir, entries)
	}
	return h
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// in returns the environment's helpers bound to t (a subtest must not
// fail its parent).
func (h *hostileEnv) in(t *testing.T) *testEnv {
	e := *h.testEnv
	e.t = t
	return &e
}

// attacker is a Sage-cell session running hostile code.
type attacker struct {
	id     string
	c      *wsClient
	uid    int
	kernel *kernelpool.Kernel
}

// newAttacker leases a kernel through POST /kernel and learns its uid.
func (h *hostileEnv) newAttacker(t *testing.T) *attacker {
	t.Helper()
	e := h.in(t)
	k := e.newKernel(url.Values{"timeout": {"300"}})
	a := &attacker{id: k.ID, c: e.dialSage(k.ID, "")}
	sess := h.gw.sessions.get(k.ID)
	if sess == nil {
		t.Fatalf("session %s unknown right after POST /kernel", k.ID)
	}
	a.kernel = sess.Kernel()
	out, dead := a.run(t, "import os; print(os.getuid())")
	uid, err := strconv.Atoi(strings.TrimSpace(streamText(out)))
	if dead || err != nil {
		t.Fatalf("attacker uid: %q (dead %v)", streamText(out), dead)
	}
	a.uid = uid
	return a
}

// run executes code and returns its frames up to its idle status, or up
// to the session's dead status (dead true) if the kernel did not survive.
func (a *attacker) run(t *testing.T, code string) (frames []frame, dead bool) {
	t.Helper()
	return a.wait(t, a.execute(t, code))
}

// execute sends code and returns its msg_id, for wait.
func (a *attacker) execute(t *testing.T, code string) string {
	t.Helper()
	c := *a.c
	c.t = t
	return c.execute(code)
}

// wait reads the frames of request id up to its reply and idle status
// (so that nothing of it is left for the next request), or up to the
// session's dead status (dead true) if the kernel did not survive.
func (a *attacker) wait(t *testing.T, id string) (frames []frame, dead bool) {
	t.Helper()
	c := *a.c
	c.t = t
	frames = replyAndIdle(&c, id)
	return frames, frames[len(frames)-1].str("execution_state") == "dead"
}

// replyAndIdle reads until both the execute_reply and the idle status of
// request id have come, or the session's dead status. Reply and status
// travel on different sockets, in either order; the kernel's output comes
// before its idle status, the gateway's cellgate.files before the reply.
// Clients here send a request only once the previous one has replied: the
// gateway uploads an execution's files when it relays the reply, and a
// request sent earlier could have its files announced under the previous
// one.
func replyAndIdle(c *wsClient, id string) []frame {
	c.t.Helper()
	replied, idle := false, false
	return c.until(func(f frame) bool {
		if f.ParentHeader.MsgID == id {
			replied = replied || f.Header.MsgType == "execute_reply"
			idle = idle || f.Header.MsgType == "status" && f.str("execution_state") == "idle"
		}
		return replied && idle || f.Header.MsgType == "status" && f.str("execution_state") == "dead"
	})
}

// replyTo returns the execute_reply of request id among frames.
func replyTo(frames []frame, id string) (frame, bool) {
	for _, f := range frames {
		if f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == id {
			return f, true
		}
	}
	return frame{}, false
}

// hostileDir holds the hostile payloads, kept once for this package's
// tests and the sandbox's; its README says what each attacks and prints.
const hostileDir = "../testdata/hostile"

// hostileCode returns the hostile payload name as a cell: a first line
// that sets ARGS to args (through JSON), then the payload.
func hostileCode(t *testing.T, name string, args map[string]any) string {
	t.Helper()
	code, err := os.ReadFile(filepath.Join(hostileDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if args == nil {
		args = map[string]any{}
	}
	js, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	lit, _ := json.Marshal(string(js)) // a JSON string is a Python string literal
	return fmt.Sprintf("ARGS = __import__(\"json\").loads(%s)\n%s", lit, code)
}

// lastJSON decodes the last line of stdout that holds a JSON object.
func lastJSON(t *testing.T, text string, into any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(text), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			if err := json.Unmarshal([]byte(lines[i]), into); err != nil {
				t.Fatalf("kernel output %q: %v", lines[i], err)
			}
			return
		}
	}
	t.Fatalf("no JSON line in the kernel's output:\n%s", text)
}

func errorText(frames []frame) string {
	var out []string
	for _, f := range frames {
		if f.Header.MsgType == "error" {
			out = append(out, f.str("ename")+": "+f.str("evalue"))
		}
	}
	return strings.Join(out, "\n")
}

// uidProcesses lists the host processes (not zombies) running as uid,
// as pid → comm.
func uidProcesses(t *testing.T, uid int) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	found := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		var name, state string
		var uids []string
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":\t")
			switch k {
			case "Name":
				name = v
			case "State":
				state = v
			case "Uid":
				uids = strings.Fields(v)
			}
		}
		if strings.HasPrefix(state, "Z") || !slices.Contains(uids, strconv.Itoa(uid)) {
			continue
		}
		found[pid] = name
	}
	return found
}

// endAndCheckGone ends the attacker's session (if the kernel has not
// ended it already) and checks that nothing of its uid is left, and
// neither are its directories.
func (h *hostileEnv) endAndCheckGone(t *testing.T, a *attacker) {
	t.Helper()
	if h.gw.sessions.get(a.id) != nil {
		h.in(t).do(http.MethodDelete, "/kernel/"+a.id, "", "", nil)
	}
	h.in(t).waitEnded(a.id)
	// Shutdown is idempotent and returns once the sandbox is torn down.
	done := make(chan struct{})
	go func() { a.kernel.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("kernel %s not torn down a minute after its session ended", a.id)
	}
	if left := uidProcesses(t, a.uid); len(left) > 0 {
		t.Errorf("processes of the kernel's uid %d outlive its session: %v", a.uid, left)
	}
	if _, err := os.Stat(a.kernel.WorkDir); !os.IsNotExist(err) {
		t.Errorf("the kernel's WorkDir %s outlives its session: %v", a.kernel.WorkDir, err)
	}
}

// serverWorks checks the gateway answers, the bystander computes, and
// (newSession) that a new session can be created and computes: the pool
// refills after whatever the attack did to its kernel.
func (h *hostileEnv) serverWorks(t *testing.T, newSession bool) {
	t.Helper()
	e := h.in(t)
	var health map[string]string
	if resp := e.do(http.MethodGet, "/healthz", "", "", &health); resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d %v", resp.StatusCode, health)
	}
	h.checkBystander(t)
	if newSession {
		var res serviceResult
		resp := e.postForm("/service", url.Values{"code": {"print(1+1)"}}, &res)
		if resp.StatusCode != http.StatusOK || !res.Success || res.Stdout != "2\n" {
			t.Errorf("new session after the attack: %d %+v", resp.StatusCode, res)
		}
	}
}

// checkBystander runs print(1+1) in the bystander session.
func (h *hostileEnv) checkBystander(t *testing.T) {
	t.Helper()
	c := *h.byClient
	c.t = t
	frames := replyAndIdle(&c, c.execute("print(1+1)"))
	if got := streamText(frames); got != "2\n" || frames[len(frames)-1].str("execution_state") == "dead" {
		t.Fatalf("the bystander session broke: stdout %q, last frame %+v", got, frames[len(frames)-1])
	}
}

// pyStr quotes s for Python source (Go's quoting is valid Python for
// the printable ASCII used here).
func pyStr(s string) string { return strconv.Quote(s) }

// TestHostileKernels runs attacks through the Sage-cell websocket and
// /service against sandboxed kernels of one gateway, with a bystander
// session that computes before, during and after each.
func TestHostileKernels(t *testing.T) {
	requireBwrap(t)
	hostileKernels(t, newHostileEnv(t, func(c *sandbox.Config) { c.Fork = false }))
}

// Kernels forked from the fork server's template meet every attack as
// cold ones do.
func TestHostileForkedKernels(t *testing.T) {
	requireBwrap(t)
	h := newHostileEnv(t, func(c *sandbox.Config) { c.Fork = true })
	// A forked kernel has the template's imports before it runs a line.
	frames, _ := h.newAttacker(t).run(t, "import sys; print('preloaded' if 'numpy' in sys.modules else 'cold')")
	if got := streamText(frames); !strings.Contains(got, "preloaded") {
		t.Fatalf("the kernel was not forked (%q): %s", got, h.launcher.Describe())
	}
	hostileKernels(t, h)
	if d := h.launcher.Describe(); strings.Contains(d, "last fork failure") {
		t.Errorf("a kernel started cold: %s", d)
	}
}

func hostileKernels(t *testing.T, h *hostileEnv) {

	t.Run("IdentityAndFiles", func(t *testing.T) { h.identityAndFiles(t) })
	t.Run("Network", func(t *testing.T) { h.network(t) })
	t.Run("ForkBomb", func(t *testing.T) { h.forkBomb(t) })
	t.Run("CPULimit", func(t *testing.T) { h.cpuLimit(t) })
	t.Run("Memory", func(t *testing.T) { h.memory(t) })
	t.Run("DiskFull", func(t *testing.T) { h.diskFull(t) })
	t.Run("OpenFiles", func(t *testing.T) { h.openFiles(t) })
	t.Run("KillParentAndKillAll", func(t *testing.T) { h.killParentAndAll(t) })
	t.Run("SetsidDaemon", func(t *testing.T) { h.setsidDaemon(t) })
	t.Run("SymlinksNotUploaded", func(t *testing.T) { h.symlinks(t) })
	t.Run("ForgedFilesMessage", func(t *testing.T) { h.forgedFiles(t) })
	h.serverWorks(t, true)
	h.waitWarm() // the pool refilled after all of it
}

// identityAndFiles: the kernel runs under a uid of its own, sees none of
// the gateway's files, other kernels' directories or processes, and
// nothing of the gateway's environment.
func (h *hostileEnv) identityAndFiles(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	stateDir := hostileSandboxConfig().StateDir
	// Each must be unreadable or invisible. The host side really has them.
	secrets := []string{
		"/etc/shadow", "/etc/gshadow", "/root", "/work", stateDir,
		h.secretDir, filepath.Join(h.secretDir, "secret.txt"), h.hostUnix,
		h.ts.dir, filepath.Join(h.root, "secret-config.txt"),
		h.byWorkDir, filepath.Join(h.byWorkDir, "bystander-secret.txt"),
		h.byRunDir, filepath.Join(h.byRunDir, "kernel.json"),
	}
	if err := os.WriteFile(filepath.Join(h.root, "secret-config.txt"), []byte(h.secret), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range secrets {
		if _, err := os.Stat(p); err != nil {
			t.Logf("(host has no %s: %v)", p, err)
		}
	}
	// Ancestors of the kernel's own directories exist in the sandbox; they
	// may list only the way to them.
	ancestors := []string{h.root, filepath.Join(h.root, "w"), filepath.Join(h.root, "r")}
	frames, dead := a.run(t, hostileCode(t, "identity.py", nil))
	if dead {
		t.Fatalf("kernel died: %s", streamText(frames))
	}
	var r struct {
		UID, EUID, GID      int
		Groups              []int
		Env                 map[string]string
		Setuid              string
		Capeff, Capbnd      string
		Nonewprivs, Seccomp string
		Userns              int
	}
	lastJSON(t, streamText(frames), &r)
	// What the sandbox tests check of a cold kernel, checked here for
	// every launcher the gateway runs (forked kernels too).
	if r.Capeff != "0000000000000000" || r.Nonewprivs != "1" || r.Seccomp != "2" || r.Userns == 0 || r.Setuid == "root" {
		t.Errorf("kernel privileges: capeff %s, no_new_privs %s, seccomp %s, user namespace %d (0: made one), setuid(0) %s",
			r.Capeff, r.Nonewprivs, r.Seccomp, r.Userns, r.Setuid)
	}
	frames, dead = a.run(t, hostileCode(t, "files.py", map[string]any{"paths": append(slices.Clone(secrets), ancestors...)}))
	if dead {
		t.Fatalf("kernel died: %s", streamText(frames))
	}
	var f struct {
		Paths map[string]struct {
			Listed []string
			Read   string
			Error  string
		}
		Procs map[string]struct {
			UID int
			Cmd string
		}
		Denied map[string]string
	}
	lastJSON(t, streamText(frames), &f)
	if r.UID == 0 || r.UID == os.Getuid() || r.UID < hostileUIDBase || r.UID >= hostileUIDBase+hostileUIDCount || r.EUID != r.UID || r.GID != r.UID || r.UID != a.uid {
		t.Errorf("kernel identity uid %d euid %d gid %d: want a uid of its own in %d..%d, not root's or the gateway's (%d)",
			r.UID, r.EUID, r.GID, hostileUIDBase, hostileUIDBase+hostileUIDCount-1, os.Getuid())
	}
	if len(r.Groups) > 1 || len(r.Groups) == 1 && r.Groups[0] != r.GID {
		t.Errorf("supplementary groups %v", r.Groups)
	}
	for _, p := range secrets {
		got, ok := f.Paths[p]
		if !ok || got.Error == "" {
			t.Errorf("kernel reads %s: listed %.100q, read %.100q", p, got.Listed, got.Read)
		}
	}
	allowed := []string{"r", "w", a.id}
	for _, p := range ancestors {
		got := f.Paths[p]
		if got.Error != "" {
			continue // invisible is fine too
		}
		for _, n := range got.Listed {
			if !slices.Contains(allowed, n) {
				t.Errorf("kernel lists %s in %s (%v)", n, p, got.Listed)
			}
		}
	}
	if len(f.Procs) == 0 {
		t.Error("the kernel saw no process at all in /proc")
	}
	var foreign []string
	for pid, p := range f.Procs {
		// A forked kernel's pid 1 is catatonit, a reaper the template
		// spawned without any capability: the template's uid (root of
		// the sandbox's user namespace, which the kernel can neither
		// signal nor trace), not the kernel's.
		if pid == "1" && p.Cmd == "/usr/bin/catatonit -P " {
			continue
		}
		if p.UID != r.UID || !(strings.HasPrefix(p.Cmd, "/usr/bin/bwrap ") || strings.Contains(p.Cmd, "ipykernel_launcher")) {
			foreign = append(foreign, fmt.Sprintf("pid %s uid %d %.80q", pid, p.UID, p.Cmd))
		}
	}
	if len(foreign) > 0 || len(f.Procs) > 3 {
		slices.Sort(foreign)
		t.Errorf("/proc in the sandbox shows %d processes, want the sandbox's init and the kernel only; foreign: %d, the first: %v",
			len(f.Procs), len(foreign), foreign[:min(len(foreign), 5)])
	}
	for k, v := range r.Env {
		if strings.Contains(v, h.secret) || strings.HasPrefix(k, "CELLGATE_") || strings.HasPrefix(k, "GO") {
			t.Errorf("the gateway's environment leaks into the kernel: %s=%s", k, v)
		}
	}
	if home := r.Env["HOME"]; home == "" || home == os.Getenv("HOME") {
		t.Errorf("kernel HOME %q", home)
	}
	if len(f.Denied) == 0 {
		t.Error("the kernel tried no writes")
	}
	for p, got := range f.Denied {
		if got == "written" {
			t.Errorf("kernel wrote %s", p)
		}
	}
	if r.Setuid == "root" {
		t.Error("kernel became root with setuid(0)")
	}
	h.checkBystander(t)
	h.endAndCheckGone(t, a)
}

// network, through /service: the kernel has its own loopback and nothing
// else; the gateway's and the database's ports on 127.0.0.1, the host's
// unix sockets (by path and abstract) and other kernels' ipc sockets are
// out of reach.
func (h *hostileEnv) network(t *testing.T) {
	h.checkBystander(t)
	// The host side: these do answer.
	for _, addr := range []string{"127.0.0.1:" + h.gwPort, "127.0.0.1:" + h.dbPort} {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatalf("the host cannot reach %s either: %v", addr, err)
		}
		c.Close()
	}
	targets := map[string][]string{
		"gateway":              {"inet", "127.0.0.1", h.gwPort},
		"gateway localhost":    {"inet", "localhost", h.gwPort},
		"gateway ::1":          {"inet6", "::1", h.gwPort},
		"database":             {"inet", "127.0.0.1", h.dbPort},
		"host unix socket":     {"unix", h.hostUnix},
		"host abstract socket": {"abstract", h.abstract},
		"bystander ipc socket": {"unix", h.bySocket},
	}
	code := hostileCode(t, "network.py", map[string]any{"connect": targets})
	var res serviceResult
	resp := h.in(t).postForm("/service", url.Values{"code": {code}}, &res)
	if resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("/service: %d %+v", resp.StatusCode, res)
	}
	var r struct {
		Interfaces []string
		ProcNetDev []string `json:"proc net dev"`
		Sys        *bool
		Connect    map[string]string
		Own        string `json:"own loopback"`
	}
	lastJSON(t, res.Stdout, &r)
	if !slices.Equal(r.Interfaces, []string{"lo"}) {
		t.Errorf("kernel sees interfaces %q, want only its loopback", r.Interfaces)
	}
	if !slices.Equal(r.ProcNetDev, []string{"lo"}) {
		t.Errorf("kernel's /proc/net/dev lists %q", r.ProcNetDev)
	}
	if r.Sys == nil || *r.Sys {
		t.Errorf("kernel sees /sys/class/net (%v)", r.Sys)
	}
	for k := range targets {
		if got := r.Connect[k]; got == "" || got == "connected" {
			t.Errorf("kernel connects to the %s: %q", k, got)
		}
	}
	if r.Own != "connected" {
		t.Errorf("the kernel's own loopback does not work: %q", r.Own)
	}
	t.Logf("kernel's connection attempts: %s", lastLine(res.Stdout))
	h.checkBystander(t)
}

// forkBomb: the bomb stops at the kernel's process limit; while its
// children keep trying, the gateway, the bystander and new sessions work;
// ending the session ends them all.
func (h *hostileEnv) forkBomb(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	frames, dead := a.run(t, hostileCode(t, "forkbomb.py", nil))
	if dead {
		t.Logf("the fork bomb killed its own kernel: %s", streamText(frames))
	} else {
		var r struct {
			UID    int
			Errno  string
			Forked int
		}
		lastJSON(t, streamText(frames), &r)
		if r.Errno != "EAGAIN" || r.Forked >= hostileProcesses || r.UID != a.uid {
			t.Errorf("fork bomb (uid %d): %s after %d forks (limit %d processes)", r.UID, r.Errno, r.Forked, hostileProcesses)
		}
	}
	// The outer bwrap runs as the uid too, outside the sandbox's user
	// namespace where the limit counts.
	if n := len(uidProcesses(t, a.uid)); n > hostileProcesses+1 {
		t.Errorf("%d processes of the kernel's uid, limit %d", n, hostileProcesses)
	} else {
		t.Logf("%d processes of uid %d while the bomb runs", n, a.uid)
	}
	h.serverWorks(t, true)
	h.endAndCheckGone(t, a)
	h.checkBystander(t)
}

// cpuLimit: a busy loop dies at the CPU limit; the client is told the
// kernel died.
func (h *hostileEnv) cpuLimit(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	busy := hostileCode(t, "cpu.py", nil)
	start := time.Now()
	id := a.execute(t, busy)
	h.checkBystander(t) // while the loop burns
	frames, dead := a.wait(t, id)
	if !dead {
		t.Fatalf("busy loop finished instead of dying: %s", errorText(frames))
	}
	if reason := frames[len(frames)-1].str("reason"); !strings.HasPrefix(reason, session.EndKernel) {
		t.Errorf("dead reason %q, want %q", reason, session.EndKernel)
	}
	if err := a.kernel.Err(); err == nil || !strings.Contains(err.Error(), sandbox.ErrCPULimit.Error()) {
		t.Errorf("kernel ended with %v, want the CPU limit", err)
	}
	t.Logf("busy loop killed after %v: %v", time.Since(start).Round(time.Millisecond), a.kernel.Err())
	h.endAndCheckGone(t, a)
	h.checkBystander(t)
	// The same through /service: a clear error, not a hang or a success.
	var res struct {
		serviceResult
		Message string `json:"message"`
	}
	resp := h.in(t).postForm("/service", url.Values{"code": {busy}}, &res)
	if res.Success || res.Error == "" && res.Message == "" {
		t.Errorf("/service busy loop: %d %+v", resp.StatusCode, res)
	}
	t.Logf("/service busy loop: %d, error %q, message %q", resp.StatusCode, res.Error, res.Message)
	h.serverWorks(t, true)
}

// memory, through /service: allocating ten times the limit, then growing
// until refused, gets MemoryError; the host's memory is untouched.
func (h *hostileEnv) memory(t *testing.T) {
	h.checkBystander(t)
	var res struct {
		serviceResult
		Message string `json:"message"`
	}
	resp := h.in(t).postForm("/service", url.Values{"code": {hostileCode(t, "memory.py", map[string]any{"limit": hostileMemory})}}, &res)
	if resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("/service: %d %+v", resp.StatusCode, res)
	}
	var r struct {
		Big  string
		Grew int64
	}
	lastJSON(t, res.Stdout, &r)
	if r.Big != "MemoryError" || r.Grew <= 0 || r.Grew >= hostileMemory {
		t.Errorf("allocating past %d bytes: big %s, grew %d", hostileMemory, r.Big, r.Grew)
	}
	h.serverWorks(t, true)
}

// diskFull: one file past the file size limit, then the disk, then the
// inodes: EFBIG and ENOSPC, the kernel's WorkDir is full too; the kernel
// computes on once it frees the space.
func (h *hostileEnv) diskFull(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(a.kernel.WorkDir, &fs); err != nil {
		t.Fatal(err)
	}
	if size := fs.Blocks * uint64(fs.Bsize); size > hostileDisk {
		t.Errorf("the kernel's WorkDir is on a %d-byte file system, limit %d", size, hostileDisk)
	}
	frames, dead := a.run(t, hostileCode(t, "disk.py", map[string]any{"file_size": hostileFileSize}))
	if dead {
		t.Fatalf("kernel died filling its disk: %s %s", streamText(frames), errorText(frames))
	}
	var r struct {
		FileSize  string `json:"file size"`
		Fill      string
		Filled    int
		AfterFill map[string]string `json:"after fill"`
		Inodes    string
		Files     int
	}
	lastJSON(t, streamText(frames), &r)
	if r.FileSize != "EFBIG" {
		t.Errorf("writing past the file size limit: %q, want EFBIG", r.FileSize)
	}
	if r.Fill != "ENOSPC" || r.Filled > hostileDisk || r.AfterFill["."] != "ENOSPC" {
		t.Errorf("filling the disk: %q after %d bytes (limit %d), then in WorkDir %q", r.Fill, r.Filled, hostileDisk, r.AfterFill["."])
	}
	for place, got := range r.AfterFill {
		if got != "ENOSPC" {
			t.Errorf("after filling /tmp, a write in %s: %q, want ENOSPC", place, got)
		}
	}
	if r.Inodes != "ENOSPC" || r.Files > hostileInodes {
		t.Errorf("creating files: %q after %d (limit %d)", r.Inodes, r.Files, hostileInodes)
	}
	h.checkBystander(t)
	frames, dead = a.run(t, "print(1+1)")
	if dead || streamText(frames) != "2\n" {
		t.Errorf("kernel after freeing its disk: %q %s (dead %v)", streamText(frames), errorText(frames), dead)
	}
	h.endAndCheckGone(t, a)
	h.serverWorks(t, true)
}

// openFiles: opening files and sockets without end stops at the limit.
func (h *hostileEnv) openFiles(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	frames, dead := a.run(t, hostileCode(t, "openfiles.py", nil))
	if dead {
		t.Logf("running out of descriptors killed the kernel (contained): %s", streamText(frames))
	} else {
		var r struct {
			Files, Sockets string
			Opened         int
		}
		lastJSON(t, streamText(frames), &r)
		if r.Files != "EMFILE" || r.Sockets != "EMFILE" || r.Opened >= hostileOpenFiles {
			t.Errorf("opening files: %+v (limit %d)", r, hostileOpenFiles)
		}
		frames, dead = a.run(t, "print(1+1)")
		if dead || streamText(frames) != "2\n" {
			t.Errorf("kernel after closing its files: %q %s (dead %v)", streamText(frames), errorText(frames), dead)
		}
	}
	h.endAndCheckGone(t, a)
	h.serverWorks(t, true)
}

// killParentAndAll: SIGKILL to the kernel's parent and to -1, and probes
// of the gateway's and the bystander's host pids, reach nothing outside
// the sandbox; a setsid daemon left behind dies with the session.
func (h *hostileEnv) killParentAndAll(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	byPid := h.gw.sessions.get(h.byID).Kernel().Pid()
	probe := map[string]int{"gateway": os.Getpid(), "bystander": byPid}
	frames, dead := a.run(t, hostileCode(t, "kill.py", map[string]any{"probe": probe}))
	if dead {
		t.Logf("kernel died killing its parent or everything (contained): %s", streamText(frames))
	} else {
		var r struct {
			Probe map[string]string
			Child int
		}
		lastJSON(t, streamText(frames), &r)
		t.Logf("kill from the sandbox: %s", lastLine(streamText(frames)))
		for k := range probe {
			// Host pids this low could exist in the sandbox's namespace too.
			if r.Probe[k] != "ESRCH" && os.Getpid() > 100 && byPid > 100 {
				t.Errorf("probe %s from the sandbox: %q, want ESRCH", k, r.Probe[k])
			}
		}
		if r.Child != -9 {
			t.Errorf("kill(-1) did not reach the kernel's own child: %d", r.Child)
		}
		frames, dead = a.run(t, daemonCode(t))
		if dead || !daemonStarted(t, frames) {
			t.Errorf("daemon: %q %s (dead %v)", streamText(frames), errorText(frames), dead)
		}
		waitDaemon(t, a.uid)
	}
	h.checkBystander(t)
	h.endAndCheckGone(t, a)
	h.serverWorks(t, true)
}

// daemonCode is daemon.py as a cell, its heartbeat in the kernel's /tmp
// (not uploaded).
func daemonCode(t *testing.T) string {
	return hostileCode(t, "daemon.py", map[string]any{"heartbeat": "/tmp/heartbeat"})
}

// daemonStarted reports whether daemon.py's cell says it started one.
func daemonStarted(t *testing.T, frames []frame) bool {
	t.Helper()
	if !strings.Contains(streamText(frames), "{") {
		return false
	}
	var r struct{ Daemon string }
	lastJSON(t, streamText(frames), &r)
	return r.Daemon == "started"
}

// lastLine is the last non-empty line of text.
func lastLine(text string) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	return lines[len(lines)-1]
}

// waitDaemon waits for the process daemon.py names cgdaemon.
func waitDaemon(t *testing.T, uid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, name := range uidProcesses(t, uid) {
			if name == "cgdaemon" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no daemon among the processes of uid %d: %v", uid, uidProcesses(t, uid))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setsidDaemon: a daemon in a session of its own, ignoring SIGTERM and
// SIGHUP, outlives its kernel, which kills itself: the client is told the
// kernel died, and nothing of its uid is left.
func (h *hostileEnv) setsidDaemon(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	frames, dead := a.run(t, daemonCode(t))
	if dead || !daemonStarted(t, frames) {
		t.Fatalf("daemon: %q %s (dead %v)", streamText(frames), errorText(frames), dead)
	}
	waitDaemon(t, a.uid)
	frames, dead = a.run(t, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
	if !dead {
		t.Fatalf("kernel survived SIGKILL: %s", streamText(frames))
	}
	if reason := frames[len(frames)-1].str("reason"); !strings.HasPrefix(reason, session.EndKernel) {
		t.Errorf("dead reason %q, want %q", reason, session.EndKernel)
	}
	h.endAndCheckGone(t, a)
	h.serverWorks(t, true)
}

// symlinks: links planted in the WorkDir to the gateway's files, to
// /etc/passwd and /etc/shadow, to the bystander's files, and a FIFO, are
// not uploaded (the cellgate.files message lists only the regular file),
// not served, and do not stall the uploader; nor is a file flipped
// between a symlink, a FIFO and a regular file while the uploader works.
func (h *hostileEnv) symlinks(t *testing.T) {
	h.checkBystander(t)
	a := h.newAttacker(t)
	c := *a.c
	c.t = t
	secretFile := filepath.Join(h.secretDir, "secret.txt")
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"passwd": "/etc/passwd", "shadow": "/etc/shadow", "etc": "/etc",
		"secret.txt": secretFile, "secretdir": h.secretDir,
		"neighbour.txt": filepath.Join(h.byWorkDir, "bystander-secret.txt"),
	}
	id := c.send("shell", "execute_request", map[string]any{
		"code": hostileCode(t, "symlinks.py", map[string]any{"links": links}), "silent": false,
		"user_expressions": map[string]string{"_sagecell_files": "sys._sage_.new_files()"},
	})
	frames := replyAndIdle(&c, id)
	reply, _ := replyTo(frames, id)
	if reply.str("status") != "ok" || !strings.Contains(streamText(frames), `{"planted": `) {
		t.Fatalf("planting links: %s %s", streamText(frames), errorText(frames))
	}
	var planted struct{ Planted []string }
	lastJSON(t, streamText(frames), &planted)
	if len(planted.Planted) != len(links)+3 {
		t.Errorf("planted %v", planted.Planted)
	}
	var announced []session.FileLink
	for _, f := range frames {
		if f.Header.MsgType == session.FilesMsgType {
			var files struct{ Files []session.FileLink }
			raw, _ := json.Marshal(f.Content)
			_ = json.Unmarshal(raw, &files)
			announced = append(announced, files.Files...)
		}
	}
	if len(announced) != 1 || announced[0].Name != "ok.txt" {
		t.Errorf("uploaded %+v, want ok.txt alone", announced)
	}
	var exprs map[string]struct {
		Data map[string]string `json:"data"`
	}
	_ = json.Unmarshal(reply.Content["user_expressions"], &exprs)
	if got := exprs["_sagecell_files"].Data["text/plain"]; got != `["ok.txt"]` {
		t.Errorf("_sagecell_files = %q", got)
	}
	notices := streamText(frames)
	for _, name := range []string{"passwd", "shadow", "etc", "secret.txt", "neighbour.txt", "fifo", "sub/passwd"} {
		if !strings.Contains(notices, name+" not stored") {
			t.Errorf("no notice that %s was not stored:\n%s", name, notices)
		}
	}
	for _, l := range announced {
		status, body, _ := fetch(t, l.URL)
		if status != http.StatusOK || string(body) != "fine" {
			t.Errorf("%s: %d %q", l.Name, status, body)
		}
	}
	for name := range links {
		status, body, _ := fetch(t, h.url("/kernel/"+a.id+"/files/"+name))
		if status != http.StatusNotFound || strings.Contains(string(body), h.secret) || len(passwd) > 0 && strings.Contains(string(body), string(passwd)) {
			t.Errorf("GET /kernel/%s/files/%s: %d %.200q", a.id, name, status, body)
		}
	}
	h.checkBystander(t)

	// The race: race.txt changes kind under the uploader, for 3 s, while
	// the client runs cell after cell. (Names starting with "." are not
	// uploaded: the benign file is written under one and renamed.)
	frames, dead := a.run(t, hostileCode(t, "race.py", map[string]any{"target": secretFile}))
	if dead {
		t.Fatalf("race: kernel died: %s", errorText(frames))
	}
	uploads := 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		// Paced: hundreds of back-to-back cells plus the flipping thread
		// would spend the kernel's CPU limit, and the sandbox kills it.
		time.Sleep(20 * time.Millisecond)
		id := c.execute("pass")
		frames := replyAndIdle(&c, id)
		for _, f := range frames {
			if f.Header.MsgType != session.FilesMsgType {
				continue
			}
			var files struct{ Files []session.FileLink }
			raw, _ := json.Marshal(f.Content)
			_ = json.Unmarshal(raw, &files)
			for _, l := range files.Files {
				status, body, _ := fetch(t, l.URL)
				uploads++
				if l.Name != "race.txt" || status != http.StatusOK || string(body) != "benign" {
					t.Errorf("race: uploaded %s holds %d %.200q", l.Name, status, body)
				}
			}
		}
	}
	t.Logf("race: %d uploads of race.txt, all benign", uploads)
	h.endAndCheckGone(t, a)
	// The gateway's cleanup of the WorkDir did not follow the links either.
	if data, err := os.ReadFile(secretFile); err != nil || string(data) != h.secret {
		t.Errorf("the gateway's file after the session: %q %v", data, err)
	}
	if data, err := os.ReadFile("/etc/passwd"); err != nil || string(data) != string(passwd) {
		t.Errorf("/etc/passwd after the session: %v", err)
	}
	h.serverWorks(t, false)
}

// forgedFiles: a kernel sends a cellgate.files message of its own, as the
// gateway announces uploads, with links to javascript: and to another
// site. The web client turns these into <a href> and <img src> under
// "File written:", so clients must only ever see the gateway's own.
//
// Session.observe (gateway/session/session.go) drops kernel messages whose
// msg_type starts with "cellgate.", so only the gateway's own announcements
// reach the replay and /service's "files". (The test only compares URLs; it
// fetches none.)
func (h *hostileEnv) forgedFiles(t *testing.T) {
	h.checkBystander(t)
	own := strings.TrimSuffix(h.http.URL, "/") + "/files/"
	check := func(via string, links []session.FileLink) {
		t.Helper()
		for _, l := range links {
			if !strings.HasPrefix(l.URL, own) {
				t.Errorf("BUG: %s: a kernel-forged cellgate.files link reaches the client: %+v", via, l)
			}
		}
	}
	a := h.newAttacker(t)
	c := *a.c
	c.t = t
	forge := hostileCode(t, "forge.py", nil)
	id := c.execute(forge)
	frames := replyAndIdle(&c, id)
	if !strings.Contains(streamText(frames), "forged") {
		t.Fatalf("forging: %q %s", streamText(frames), errorText(frames))
	}
	for _, f := range frames {
		if f.Header.MsgType == session.FilesMsgType {
			var files struct{ Files []session.FileLink }
			raw, _ := json.Marshal(f.Content)
			_ = json.Unmarshal(raw, &files)
			check("websocket", files.Files)
		}
	}
	h.endAndCheckGone(t, a)
	var res serviceResult
	if resp := h.in(t).postForm("/service", url.Values{"code": {forge}}, &res); resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("/service: %d %+v", resp.StatusCode, res)
	}
	check("/service", res.Files)
	h.checkBystander(t)
}

// TestHostileLifespan: a kernel that only waits is killed at its sandbox
// lifespan, the backstop behind the gateway's own limits, and the client
// is told. It has a gateway of its own: a short lifespan would end the
// other tests' kernels too.
func TestHostileLifespan(t *testing.T) {
	requireBwrap(t)
	const lifespan = 8 * time.Second
	launcher := newHostileLauncher(t, func(c *sandbox.Config) { c.Lifespan = lifespan })
	env := newTestEnvWith(t, 1, 3, nil, func(k *kernelpool.KernelConfig) { k.Launcher = launcher })
	k := env.newKernel(url.Values{"timeout": {"300"}})
	c := env.dialSage(k.ID, "")
	kernel := env.gw.sessions.get(k.ID).Kernel()
	id := c.execute("import time\ntime.sleep(600)")
	frames := c.until(func(f frame) bool {
		return f.Header.MsgType == "status" && (f.str("execution_state") == "dead" || f.ParentHeader.MsgID == id && f.str("execution_state") == "idle")
	})
	if last := frames[len(frames)-1]; last.str("execution_state") != "dead" || !strings.HasPrefix(last.str("reason"), session.EndKernel) {
		t.Fatalf("sleeper: last frame %+v", last)
	}
	if err := kernel.Err(); err == nil || !strings.Contains(err.Error(), sandbox.ErrLifespan.Error()) {
		t.Errorf("kernel ended with %v, want its lifespan", err)
	}
	env.waitEnded(k.ID)
}
