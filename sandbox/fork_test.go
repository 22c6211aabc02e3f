package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// skipWithoutIPyKernel skips a test of forked kernels where ipykernel is
// missing.
func skipWithoutIPyKernel(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/lib/python3/dist-packages/ipykernel_launcher.py"); err != nil {
		t.Skipf("python3-ipykernel is not installed: %v", err)
	}
}

// ipyKernel is an ipykernel started by a test, and its connection file.
type ipyKernel struct {
	*kernel
	conn string
	key  string
}

// poolDirs makes the parents of kernels' RuntimeDir and WorkDir, as the
// pool has them: kernels in the same ones share a template.
func poolDirs(t *testing.T) (runtimeRoot, workRoot string) {
	base := t.TempDir()
	runtimeRoot, workRoot = filepath.Join(base, "run"), filepath.Join(base, "work")
	for _, d := range []string{runtimeRoot, workRoot} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return runtimeRoot, workRoot
}

// startIPyKernel launches an ipykernel in b with a fresh random key (hex,
// as the pool makes them), its directories in roots (poolDirs), and runs
// one cell in it, so that it has read its connection file and answered
// with its key.
func startIPyKernel(t *testing.T, b *Bwrap, runtimeRoot, workRoot string) *ipyKernel {
	t.Helper()
	return startKernelOf(t, b, runtimeRoot, workRoot, "/usr/bin/python3", "-m", "ipykernel_launcher", "-f")
}

// startKernelOf is startIPyKernel for the kernel argv (the connection
// file's path is added at the end).
func startKernelOf(t *testing.T, b *Bwrap, runtimeRoot, workRoot string, argv ...string) *ipyKernel {
	t.Helper()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	key := hex.EncodeToString(raw)
	run, err := os.MkdirTemp(runtimeRoot, "k")
	if err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp(workRoot, "k")
	if err != nil {
		t.Fatal(err)
	}
	conn := writeConnectionKey(t, run, key)
	k := &ipyKernel{kernel: launchIn(t, b, Request{
		Argv:       append(argv, conn),
		RuntimeDir: run, WorkDir: work,
	}), conn: conn, key: key}
	k.waitSockets(t, 2*time.Minute)
	if out := k.cell(t, "print('up', 1+1)"); !strings.Contains(out, "up 2") {
		t.Fatalf("the kernel did not run a cell: %s", out)
	}
	return k
}

// cell runs code in k from outside (jupyter_client on its ipc sockets) and
// returns what it printed; the cell must succeed.
func (k *ipyKernel) cell(t *testing.T, code string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, k.conn, code).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status: ok") {
		t.Fatalf("execute: %v: %s\nkernel output:\n%s", err, out, k.out)
	}
	return string(out)
}

// lastJSON decodes the last line of out that starts with "{".
func lastJSON(t *testing.T, out string, into any) {
	t.Helper()
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "{") {
			line = l
		}
	}
	if err := json.Unmarshal([]byte(line), into); err != nil {
		t.Fatalf("no JSON result: %v\n%s", err, out)
	}
}

// descendants lists pid and the processes below it, parents first.
func descendants(pid int) []int {
	tree := []int{pid}
	for i := 0; i < len(tree); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", tree[i]))
		for _, task := range tasks {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", tree[i], task.Name()))
			for _, f := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(f); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree
}

func comm(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(data))
}

// scanMemory reports which needles occur in the readable memory of pid
// (read as root through /proc/PID/mem), and how many bytes it read.
func scanMemory(t *testing.T, pid int, needles ...[]byte) ([]bool, int64) {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk+longest-1)
	found := make([]bool, len(needles))
	var total int64
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1][0] != 'r' || f[len(f)-1] == "[vvar]" || f[len(f)-1] == "[vsyscall]" {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 63)
		end, err2 := strconv.ParseUint(hi, 16, 63)
		if err1 != nil || err2 != nil {
			continue
		}
		for pos := start; pos < end; pos += chunk {
			want := min(end-pos, uint64(len(buf)))
			n, _ := mem.ReadAt(buf[:want], int64(pos))
			total += int64(n)
			for i, needle := range needles {
				if !found[i] && bytes.Contains(buf[:n], needle) {
					found[i] = true
				}
			}
			if uint64(n) < want {
				break // unreadable from here on
			}
		}
	}
	return found, total
}

// A forked kernel finds no other kernel's HMAC key in its own memory, and
// no key ever reaches the template (or the two helper processes each fork
// keeps above its kernel): each kernel reads its connection file after the
// fork. Each scan must find what it must find (the kernel's own key, the
// template's own program), or it proves nothing.
func TestForkedKernelKeys(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	b := newBwrap(t, func(c *Config) { c.Fork = true })
	t.Cleanup(b.Close) // after the kernels' Close
	runtimeRoot, workRoot := poolDirs(t)
	a := startIPyKernel(t, b, runtimeRoot, workRoot)
	// B is forked after the template has forked A: whatever the template
	// learnt of A would be in B.
	k := startIPyKernel(t, b, runtimeRoot, workRoot)
	templates := b.Templates()
	b.mu.Lock()
	forkErr := b.forkErr
	b.mu.Unlock()
	if forkErr != nil || len(templates) != 1 || templates[0].Forks != 2 || templates[0].Pid <= 0 {
		t.Fatalf("the kernels were not both forked from one template: %v, %+v", forkErr, templates)
	}
	half := len(a.key) / 2
	var r struct {
		Found      map[string]int
		Regions    int
		Bytes      int64
		Unreadable int
	}
	lastJSON(t, k.cell(t, hostile(t, "keys.py", map[string]any{"needles": map[string][]string{
		"own":   {k.key[:half], k.key[half:]},
		"other": {a.key[:half], a.key[half:]},
	}})), &r)
	t.Logf("kernel B scanned %d regions, %d MiB (%d unreadable): %v", r.Regions, r.Bytes>>20, r.Unreadable, r.Found)
	if r.Found["own"] == 0 {
		t.Errorf("kernel B's scan of its own memory (%d regions, %d bytes) did not find its own key: the scan proves nothing", r.Regions, r.Bytes)
	}
	if r.Found["other"] != 0 {
		t.Errorf("kernel B holds kernel A's key in %d places of its memory", r.Found["other"])
	}

	// From the gateway's side, as root: the template, and each kernel's
	// helpers, hold neither key; each kernel holds its own.
	keyA, keyB := []byte(a.key), []byte(k.key)
	program := []byte(strings.SplitN(forkServerSource, "\n", 2)[0])
	found, n := scanMemory(t, templates[0].Pid, keyA, keyB, program)
	t.Logf("template (pid %d, %s): %d MiB scanned", templates[0].Pid, comm(templates[0].Pid), n>>20)
	if !found[2] {
		t.Errorf("the scan of the template's memory (%d bytes) did not find its own program: it proves nothing", n)
	}
	if found[0] || found[1] {
		t.Errorf("the template holds a kernel's key (A: %v, B: %v)", found[0], found[1])
	}
	// Nor does the spare, the next kernel made ahead of its request.
	spare := spareOf(t, templates[0].Pid)
	found, n = scanMemory(t, spare, keyA, keyB, program)
	t.Logf("spare (pid %d, %s): %d MiB scanned", spare, comm(spare), n>>20)
	if !found[2] {
		t.Errorf("the scan of the spare's memory (%d bytes) did not find the template's program: it proves nothing", n)
	}
	if found[0] || found[1] {
		t.Errorf("the spare holds a kernel's key (A: %v, B: %v)", found[0], found[1])
	}
	for _, c := range []struct {
		name       string
		k          *ipyKernel
		own, other []byte
	}{{"A", a, keyA, keyB}, {"B", k, keyB, keyA}} {
		pid1 := pid1Of(t, c.k.p.Pid())
		if got := comm(pid1); got != "catatonit" {
			t.Errorf("kernel %s: its pid 1 (%d) is %q, want catatonit", c.name, pid1, got)
		}
		for _, pid := range []int{pid1, c.k.p.Pid()} {
			found, n := scanMemory(t, pid, c.own, c.other)
			name := comm(pid)
			t.Logf("kernel %s: pid %d (%s): %d MiB scanned, own key %v", c.name, pid, name, n>>20, found[0])
			if found[1] {
				t.Errorf("kernel %s: pid %d (%s) holds the other kernel's key", c.name, pid, name)
			}
			switch {
			case pid == pid1 && found[0]:
				t.Errorf("kernel %s: its pid 1 (%d) holds the kernel's key", c.name, pid)
			case pid != pid1 && !found[0]:
				t.Errorf("kernel %s: the scan of the kernel (pid %d, %s: %d bytes) did not find its own key: it proves nothing", c.name, pid, name, n)
			}
		}
	}
}

// spareOf is the host pid of the template's spare, waiting for its
// request: the template makes it once it has answered a launch.
func spareOf(t *testing.T, template int) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", template, template))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && comm(pid) == "cellgate-spare" {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("template %d has no spare (children %s)", template, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pid1Of is the host pid of the pid 1 of pid's pid namespace.
func pid1Of(t *testing.T, pid int) int {
	t.Helper()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		other, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if theirs, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid"); theirs != ns {
			continue
		}
		status, _ := os.ReadFile("/proc/" + e.Name() + "/status")
		for _, line := range strings.Split(string(status), "\n") {
			if f, ok := strings.CutPrefix(line, "NSpid:"); ok {
				if fields := strings.Fields(f); len(fields) > 0 && fields[len(fields)-1] == "1" {
					return other
				}
			}
		}
	}
	t.Fatalf("no pid 1 in the pid namespace of %d (%s)", pid, ns)
	return 0
}

// A forked kernel is who a cold one is (TestBwrapIdentity's checks, run as
// cells of two forked ipykernels): its own uid, no capability in any set
// (dropping to a uid empties the effective and permitted sets only),
// no_new_privs, the seccomp filter, no new user namespace (bwrap's
// --disable-userns for a cold kernel: tried from a single-threaded child,
// which a threaded kernel is not), pid 2 of its own namespace.
func TestForkedKernelIdentity(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	b := newBwrap(t, func(c *Config) { c.Fork = true })
	t.Cleanup(b.Close)
	runtimeRoot, workRoot := poolDirs(t)
	var ids [2]identity
	for i := range ids {
		k := startIPyKernel(t, b, runtimeRoot, workRoot)
		lastJSON(t, k.cell(t, hostile(t, "identity.py", identityArgs())), &ids[i])
		if ids[i].CWD != k.req.WorkDir {
			t.Errorf("cwd %s, want WorkDir %s", ids[i].CWD, k.req.WorkDir)
		}
	}
	if ts := b.Templates(); len(ts) != 1 || ts[0].Forks != 2 {
		t.Fatalf("the kernels were not both forked from one template: %+v", ts)
	}
	checkIdentities(t, b.Config(), ids[0], ids[1])
}

// templateGone waits until the template process pid has ended and b no
// longer lists it.
func templateGone(t *testing.T, b *Bwrap, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	listed := func() bool {
		for _, tm := range b.Templates() {
			if tm.Pid == pid {
				return true
			}
		}
		return false
	}
	for comm(pid) == "cellgate-tmpl" || listed() {
		if time.Now().After(deadline) {
			t.Fatalf("template %d still runs (%s) or is listed: %+v", pid, comm(pid), b.Templates())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A template is replaced after Config.ForkMax kernels: the next kernel
// comes from a new one, while the old one lives on, forking no more, until
// its last kernel has ended; its kernels keep working meanwhile.
func TestForkTemplateReplacedAfterForks(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	b := newBwrap(t, func(c *Config) { c.Fork = true; c.ForkMax = 2 })
	b.checkEvery = 0 // and its files are compared at every fork: nothing changed
	t.Cleanup(b.Close)
	runtimeRoot, workRoot := poolDirs(t)
	k1 := startIPyKernel(t, b, runtimeRoot, workRoot)
	k2 := startIPyKernel(t, b, runtimeRoot, workRoot)
	first := b.Templates()
	if len(first) != 1 || first[0].Forks != 2 || first[0].Kernels != 2 || first[0].Retired != "" {
		t.Fatalf("two kernels, ForkMax 2: want one template that made both: %+v", first)
	}
	k3 := startIPyKernel(t, b, runtimeRoot, workRoot)
	ts := b.Templates()
	var old, cur *Template
	for i := range ts {
		if ts[i].Pid == first[0].Pid {
			old = &ts[i]
		} else {
			cur = &ts[i]
		}
	}
	if len(ts) != 2 || old == nil || cur == nil || old.Retired == "" || old.Kernels != 2 || cur.Retired != "" || cur.Forks != 1 {
		t.Fatalf("the third kernel must come from a new template, the old one retired with its two kernels: %+v", ts)
	}
	t.Logf("old template retired: %s", old.Retired)
	if out := k1.cell(t, "print('still', 6*7)"); !strings.Contains(out, "still 42") {
		t.Errorf("a kernel of the retired template: %s", out)
	}
	if err := k1.p.Close(); err != nil {
		t.Fatal(err)
	}
	if comm(old.Pid) != "cellgate-tmpl" {
		t.Fatalf("the retired template ended with a kernel of its own left (%s)", comm(old.Pid))
	}
	if out := k2.cell(t, "print('still', 6*7)"); !strings.Contains(out, "still 42") {
		t.Errorf("a kernel of the retired template: %s", out)
	}
	if err := k2.p.Close(); err != nil {
		t.Fatal(err)
	}
	templateGone(t, b, old.Pid)
	if ts := b.Templates(); len(ts) != 1 || ts[0].Pid != cur.Pid {
		t.Errorf("after the retired template's last kernel: %+v, want the new one only", ts)
	}
	if out := k3.cell(t, "print('new', 6*7)"); !strings.Contains(out, "new 42") {
		t.Errorf("the new template's kernel: %s", out)
	}
}

// A template is replaced when a module it preloaded changes on disk (here
// one of Config.ForkPreload, in a directory of its own on the kernels'
// PYTHONPATH): the next kernel comes from a new template that imported the
// new code, while the kernels of the old one keep the old code and run on.
func TestForkTemplateReplacedOnPackageChange(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	dir := preloadDir(t)
	module := filepath.Join(dir, "cellgate_probe_mod.py")
	write := func(value int) {
		// Rewritten in place, as an editor would: the directory stays as it was.
		if err := os.WriteFile(module, []byte(fmt.Sprintf("VALUE = %d\n", value)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(1)
	b := newBwrap(t, func(c *Config) { preloadFrom(c, dir, "cellgate_probe_mod") })
	b.checkEvery = 0
	t.Cleanup(b.Close)
	runtimeRoot, workRoot := poolDirs(t)
	const probe = "import sys\nprint('preloaded', 'cellgate_probe_mod' in sys.modules)\nimport cellgate_probe_mod\nprint('value', cellgate_probe_mod.VALUE)"
	k1 := startIPyKernel(t, b, runtimeRoot, workRoot)
	if out := k1.cell(t, probe); !strings.Contains(out, "preloaded True") || !strings.Contains(out, "value 1") {
		t.Fatalf("the template did not preload the module: %s", out)
	}
	first := b.Templates()
	if len(first) != 1 {
		t.Fatalf("templates: %+v", first)
	}
	write(2)
	k2 := startIPyKernel(t, b, runtimeRoot, workRoot)
	if out := k2.cell(t, probe); !strings.Contains(out, "preloaded True") || !strings.Contains(out, "value 2") {
		t.Errorf("a kernel forked after the module changed: %s", out)
	}
	ts := b.Templates()
	if len(ts) != 2 {
		t.Fatalf("after the change: %+v, want the retired template and a new one", ts)
	}
	for _, tm := range ts {
		switch {
		case tm.Pid == first[0].Pid && (!strings.Contains(tm.Retired, module) || tm.Kernels != 1):
			t.Errorf("the old template: %+v, want it retired for %s, with its kernel", tm, module)
		case tm.Pid != first[0].Pid && (tm.Retired != "" || tm.Forks != 1):
			t.Errorf("the new template: %+v", tm)
		}
	}
	if out := k1.cell(t, probe); !strings.Contains(out, "value 1") {
		t.Errorf("the old template's kernel: %s", out)
	}
	if err := k1.p.Close(); err != nil {
		t.Fatal(err)
	}
	templateGone(t, b, first[0].Pid)
}

// SageMath kernels (`sage --python -m sage.repl.ipython_kernel`) are
// forked from a template of their own that has imported sage.all and drawn
// a plot: two of them compute, plot (Sage's temporary directory is the
// kernel's own), share no random state (Sage's, PARI's, Python's), and a
// long computation inside PARI is interrupted (cysignals' handlers work in
// a fork). Python kernels keep their template.
func TestForkedSageKernels(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/bin/sage"); err != nil {
		t.Skipf("sagemath-jupyter is not installed: %v", err)
	}
	skipWithoutIPyKernel(t)
	log := &syncBuffer{}
	b := newBwrap(t, func(c *Config) { c.Fork = true; c.ForkLog = log })
	t.Cleanup(b.Close)
	runtimeRoot, workRoot := poolDirs(t)
	sage := []string{"/usr/bin/sage", "--python", "-m", "sage.repl.ipython_kernel", "-f"}
	const probe = `import json, os, sys
from sage.misc.misc import SAGE_TMP
plot(sin(x), (x, 0, 6)).save('sine.png')
print(json.dumps({"factor": str(factor(2^64 + 1)), "random": float(random()), "zz": str(ZZ.random_element(10^30)),
  "seed": str(current_randstate().seed()), "tmp": str(SAGE_TMP),
  "tmp_exists": os.path.isdir(str(SAGE_TMP)), "home": os.environ["HOME"], "dot_sage": os.environ.get("DOT_SAGE"),
  "uid": os.getuid(), "pid": os.getpid()}))`
	type report struct {
		Factor, Zz, Seed, Tmp, Home string
		Random                      float64
		TmpExists                   bool   `json:"tmp_exists"`
		DotSage                     string `json:"dot_sage"`
		UID, Pid                    int
	}
	var rs [2]report
	var ks [2]*ipyKernel
	for i := range ks {
		ks[i] = startKernelOf(t, b, runtimeRoot, workRoot, sage...)
		lastJSON(t, ks[i].cell(t, probe), &rs[i])
		if st, err := os.Stat(filepath.Join(ks[i].req.WorkDir, "sine.png")); err != nil || st.Size() == 0 {
			t.Errorf("kernel %d: no plot in its work dir: %v", i, err)
		}
	}
	ts := b.Templates()
	b.mu.Lock()
	forkErr := b.forkErr
	b.mu.Unlock()
	if forkErr != nil || len(ts) != 1 || ts[0].Kind != "sage" || ts[0].Forks != 2 {
		t.Fatalf("the Sage kernels were not both forked from one Sage template: %v, %+v\ntemplate: %s", forkErr, ts, log)
	}
	a, c := rs[0], rs[1]
	t.Logf("Sage kernels: %+v, %+v", a, c)
	for _, r := range rs {
		if r.Factor != "274177 * 67280421310721" || !r.TmpExists || !strings.HasPrefix(r.Tmp, r.Home+"/.sage/") || r.DotSage == "" || r.Pid != 2 {
			t.Errorf("a forked Sage kernel: %+v", r)
		}
	}
	// (PARI's own generator, pari('random()'), starts from its fixed
	// default in every kernel, cold ones too.)
	if a.UID == c.UID || a.Random == c.Random || a.Zz == c.Zz || a.Seed == c.Seed {
		t.Errorf("two forked Sage kernels share state: %+v and %+v", a, c)
	}
	// cysignals turns SIGINT inside PARI into KeyboardInterrupt. PARI
	// holds the GIL: even the busy status may wait for the end, so the
	// interrupt is sent every second until the cell ends (an idle kernel
	// ignores it).
	k := ks[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, k.conn, "pari('for(i=1,10^12,)')")
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- cmd.Wait() }()
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-ended:
			waiting = false
		case <-time.After(time.Second):
			if err := k.p.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err != nil || !strings.Contains(buf.String(), "status: error KeyboardInterrupt") {
		t.Errorf("interrupting PARI: %v: %s\nkernel output:\n%s", err, buf.String(), k.out)
	}
	if out := k.cell(t, "print('after', 2^10)"); !strings.Contains(out, "after 1024") {
		t.Errorf("after the interrupt: %s", out)
	}
	// A Python kernel gets a template of its own.
	startIPyKernel(t, b, runtimeRoot, workRoot)
	if ts := b.Templates(); len(ts) != 2 {
		t.Errorf("a Python kernel beside Sage ones: templates %+v", ts)
	}
}

// A forked kernel killed as soon as Launch returns (a start cancelled at
// once: the pool closing while it refills) is gone, not left running with
// no one to stop it: its process group exists before its pid is known.
func TestForkedKernelKilledRightAfterLaunch(t *testing.T) {
	skipWithoutIPyKernel(t)
	b := newBwrap(t, func(c *Config) { c.Fork = true })
	defer b.Close()
	runtimeRoot, workRoot := poolDirs(t)
	startIPyKernel(t, b, runtimeRoot, workRoot) // the template is up: what follows are forks
	for i := range 10 {
		run, err := os.MkdirTemp(runtimeRoot, "k")
		if err != nil {
			t.Fatal(err)
		}
		work, err := os.MkdirTemp(workRoot, "k")
		if err != nil {
			t.Fatal(err)
		}
		conn := writeConnectionKey(t, run, strings.Repeat("ab", 32))
		p, err := b.Launch(context.Background(), Request{
			Argv: []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", conn}, RuntimeDir: run, WorkDir: work,
		})
		if err != nil {
			t.Fatal(err)
		}
		p.Kill()
		select {
		case <-p.Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("launch %d: a forked kernel killed right after its launch still runs 30 s later (%s)", i, b.Describe())
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// A template that cannot be built (here a preload starts a thread, which a
// template must not have when it forks) leaves kernels starting cold:
// they run, KernelStarts (shown in /readyz) and Describe say so, and
// OnForkState is told once, not at every launch that fails again.
func TestForkTemplateCannotBeBuilt(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	dir := preloadDir(t)
	module := "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
	if err := os.WriteFile(filepath.Join(dir, "cellgate_thread_mod.py"), []byte(module), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var told []error
	b := newBwrap(t, func(c *Config) {
		preloadFrom(c, dir, "cellgate_thread_mod")
		c.OnForkState = func(failure error) {
			mu.Lock()
			told = append(told, failure)
			mu.Unlock()
		}
	})
	t.Cleanup(b.Close)
	if got := b.KernelStarts(); got != "forked from templates" {
		t.Errorf("before any fork: KernelStarts = %q", got)
	}
	runtimeRoot, workRoot := poolDirs(t)
	for i := range 2 {
		k := startIPyKernel(t, b, runtimeRoot, workRoot)
		if out := k.cell(t, "import sys\nprint('preloaded', 'cellgate_thread_mod' in sys.modules, 6*7)"); !strings.Contains(out, "preloaded False 42") {
			t.Errorf("kernel %d, which should have started cold: %s", i, out)
		}
		if err := k.p.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.KernelStarts(); !strings.HasPrefix(got, "cold: the latest fork failed") || !strings.Contains(got, "threads") {
		t.Errorf("KernelStarts = %q, want cold and why", got)
	}
	if d := b.Describe(); !strings.Contains(d, "last fork failure") {
		t.Errorf("Describe does not tell the failure: %s", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] == nil {
		t.Errorf("OnForkState told %v, want one failure for two failed forks", told)
	}
}

// Without catatonit (a forked kernel's pid 1) kernels start cold, and
// KernelStarts and Describe say why; the gateway still starts.
func TestForkWithoutCatatonit(t *testing.T) {
	t.Parallel()
	skipWithoutIPyKernel(t)
	b := newBwrap(t, func(c *Config) { c.Fork, c.CatatonitPath = true, "/nonexistent/catatonit" })
	t.Cleanup(b.Close)
	runtimeRoot, workRoot := poolDirs(t)
	k := startIPyKernel(t, b, runtimeRoot, workRoot)
	if out := k.cell(t, "print(6*7)"); !strings.Contains(out, "42") {
		t.Errorf("the cold kernel: %s", out)
	}
	if ts := b.Templates(); len(ts) != 0 {
		t.Errorf("a template started: %+v", ts)
	}
	if got := b.KernelStarts(); !strings.HasPrefix(got, "cold: cannot fork") || !strings.Contains(got, "catatonit") {
		t.Errorf("KernelStarts = %q, want cold and why", got)
	}
	if d := b.Describe(); !strings.Contains(d, "start cold: cannot fork") {
		t.Errorf("Describe does not tell why kernels start cold: %s", d)
	}
}

// preloadDir makes a directory, readable by kernels, for modules a test's
// templates preload. Not under /tmp or /var/tmp: a sandbox has its own.
func preloadDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "cellgate-preload-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// preloadFrom has c fork kernels from templates that preload module from
// dir, which is on the kernels' PYTHONPATH.
func preloadFrom(c *Config, dir, module string) {
	c.Fork = true
	c.ReadOnly = append(c.ReadOnly, dir)
	c.Env = append(c.Env, "PYTHONPATH="+dir)
	c.ForkPreload = append(c.ForkPreload, module)
}

func TestPidfdPid(t *testing.T) {
	for _, c := range []struct {
		fdinfo string
		want   int
	}{
		{"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\t2\n", 4242},
		{"Pid:\t-1\nNSpid:\t-1\n", 0},
		{"Pid:\t0\n", 0},
		{"pos:\t0\nflags:\t02\n", 0},
		{"Pid:\tx\n", 0},
	} {
		got, err := pidfdPid([]byte(c.fdinfo))
		if got != c.want || (err == nil) != (c.want > 0) {
			t.Errorf("pidfdPid(%q) = %d, %v; want %d", c.fdinfo, got, err, c.want)
		}
	}
	// A real pidfd of this process.
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := pidfdPid(info); pid != os.Getpid() {
		t.Fatalf("own pidfd: %d, %v; want %d", pid, err, os.Getpid())
	}
}

func FuzzPidfdPid(f *testing.F) {
	f.Add([]byte("Pid:\t4242\nNSpid:\t4242\t2\n"))
	f.Add([]byte("Pid:\t-1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pid, err := pidfdPid(data)
		if (err == nil) != (pid > 0) {
			t.Fatalf("pidfdPid(%q) = %d, %v", data, pid, err)
		}
	})
}
