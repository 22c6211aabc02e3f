package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newCgroupBwrap is newBwrap where kernels' cgroups hold the controllers
// ctls, and skips where the host does not offer them.
func newCgroupBwrap(t *testing.T, change func(*Config), ctls ...string) *Bwrap {
	t.Helper()
	b := newBwrap(t, change)
	t.Cleanup(b.Close)
	for _, ctl := range ctls {
		if !b.cgroups.holds(ctl) {
			t.Skipf("no cgroup holds %s here: %s", ctl, b.Describe())
		}
	}
	return b
}

// withStartModes runs f for a cold kernel and for a forked one: f gets a
// launcher and a function that runs Python code in the kernel without
// waiting for it (a forked kernel's cell hands it to a child and
// returns). The code's standard output goes to out.txt in the kernel's
// work directory (what a forked kernel's children print would go to its
// client): see kernelOut.
func withStartModes(t *testing.T, change func(*Config), ctls []string, f func(t *testing.T, b *Bwrap, start func(code string) *kernel)) {
	redirect := func(work, code string) string {
		return fmt.Sprintf("import sys\nsys.stdout = open(%q, \"a\", buffering=1)\n%s", filepath.Join(work, "out.txt"), code)
	}
	t.Run("cold", func(t *testing.T) {
		t.Parallel()
		b := newCgroupBwrap(t, change, ctls...)
		f(t, b, func(code string) *kernel {
			run, work := newDirs(t)
			return launchIn(t, b, Request{
				Argv:       []string{"/usr/bin/python3", "-c", redirect(work, code)},
				RuntimeDir: run, WorkDir: work,
			})
		})
	})
	t.Run("forked", func(t *testing.T) {
		skipWithoutIPyKernel(t)
		t.Parallel()
		b := newCgroupBwrap(t, change, ctls...)
		runRoot, workRoot := poolDirs(t)
		f(t, b, func(code string) *kernel {
			k := startIPyKernel(t, b, runRoot, workRoot)
			if len(b.Templates()) == 0 {
				t.Fatal("the kernel was not forked")
			}
			k.cell(t, fmt.Sprintf("import os\nif os.fork() == 0:\n    try:\n        exec(%q)\n    finally:\n        os._exit(0)\n", redirect(k.req.WorkDir, code)))
			return k.kernel
		})
	})
}

// kernelOut is what the code withStartModes ran has printed so far.
func kernelOut(k *kernel) string {
	data, _ := os.ReadFile(filepath.Join(k.req.WorkDir, "out.txt"))
	return string(data)
}

// waitOut waits until the code withStartModes ran has printed s.
func waitOut(t *testing.T, k *kernel, s string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(kernelOut(k), s) {
		if isDone(k.p) || time.Now().After(deadline) {
			t.Fatalf("no %q from the kernel (ended: %v, err %v):\n%s\n%s", s, isDone(k.p), k.p.Err(), kernelOut(k), k.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kernelCgroupDir is the directory of pid's cgroup for controller ctl,
// which must be a kernel's (below cellgate).
func kernelCgroupDir(t *testing.T, b *Bwrap, pid int, ctl string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	key := ctl
	if b.cgroups.v2 {
		key = ""
	}
	path, ok := parseProcCgroup(data)[key]
	parent := b.cgroups.parents[ctl]
	if !ok || !strings.Contains(path, "/"+cgroupDirName+"/") {
		t.Fatalf("process %d is in %s cgroup %q, no kernel's:\n%s", pid, ctl, path, data)
	}
	return filepath.Join(parent, filepath.Base(path))
}

// kernelCgroupDirs are the kernel's cgroup directories, one per
// controller it holds.
func kernelCgroupDirs(t *testing.T, b *Bwrap, pid int) []string {
	var dirs []string
	for _, ctl := range allControllers {
		if b.cgroups.holds(ctl) {
			dirs = append(dirs, kernelCgroupDir(t, b, pid, ctl))
		}
	}
	return dirs
}

// checkCgroupsGone: once the kernel is done, its cgroups are removed.
func checkCgroupsGone(t *testing.T, k *kernel, dirs []string) {
	t.Helper()
	select {
	case <-k.p.Done():
	case <-time.After(2 * time.Minute):
		t.Fatal("the kernel still runs")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the kernel's cgroup %s outlives it (%v)", d, err)
		}
	}
}

// TestKernelCgroupPlacement: a kernel is in its cgroups, every process of
// its sandbox, from before any of its code runs (a cold kernel's first
// line reads its cgroup; a forked kernel's template child A is in it when
// Launch returns, before a client can reach it, and so is everything A
// forks after); its limits are set; and the cgroups are gone once it has
// ended.
func TestKernelCgroupPlacement(t *testing.T) {
	ctls := []string{ctlMemory, ctlPids}
	t.Run("cold", func(t *testing.T) {
		t.Parallel()
		b := newCgroupBwrap(t, nil, ctls...)
		k := launchPy(t, b, `print("cgroup:", open("/proc/self/cgroup").read().replace("\n", " "), flush=True)
import time
time.sleep(600)`)
		k.waitFor(t, "cgroup:", 30*time.Second)
		first := k.out.String()
		for _, pid := range descendants(k.p.Pid()) {
			kernelCgroupDir(t, b, pid, ctlMemory)
		}
		dirs := kernelCgroupDirs(t, b, k.p.Pid())
		// What the kernel saw first was its own cgroup: named relative to
		// the root of its cgroup namespace (bwrap makes it as it clones,
		// in the gateway's cgroup: /cellgate/NAME), in full where it has
		// none, or "/" where the namespace was made inside it.
		if !regexp.MustCompile(`memory:/(\S*cellgate/\S+)? `).MatchString(first) {
			t.Errorf("the kernel's first look at its cgroup: %s", first)
		}
		checkLimitsWritten(t, b, k.p.Pid())
		k.p.Kill()
		checkCgroupsGone(t, k, dirs)
	})
	t.Run("forked", func(t *testing.T) {
		skipWithoutIPyKernel(t)
		t.Parallel()
		b := newCgroupBwrap(t, nil, ctls...)
		runRoot, workRoot := poolDirs(t)
		run, err := os.MkdirTemp(runRoot, "k")
		if err != nil {
			t.Fatal(err)
		}
		work, err := os.MkdirTemp(workRoot, "k")
		if err != nil {
			t.Fatal(err)
		}
		conn := writeConnectionKey(t, run, "0123456789abcdef")
		k := launchIn(t, b, Request{
			Argv:       []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", conn},
			RuntimeDir: run, WorkDir: work,
		})
		if len(b.Templates()) == 0 {
			t.Fatal("the kernel was not forked")
		}
		// As Launch returns it, before any client can reach it: the
		// kernel (its pid 1, a reaper outside the kernel's uid and
		// cgroups, runs nothing of the kernel's).
		kernelCgroupDir(t, b, k.p.Pid(), ctlMemory)
		kernelCgroupDir(t, b, k.p.Pid(), ctlPids)
		checkLimitsWritten(t, b, k.p.Pid())
		dirs := kernelCgroupDirs(t, b, k.p.Pid())
		k.p.Kill()
		checkCgroupsGone(t, k, dirs)
	})
}

func checkLimitsWritten(t *testing.T, b *Bwrap, pid int) {
	t.Helper()
	c := b.Config()
	file := "memory.limit_in_bytes"
	if b.cgroups.v2 {
		file = "memory.max"
	}
	for _, w := range []struct{ ctl, file, want string }{
		{ctlMemory, file, strconv.FormatInt(c.Memory, 10)},
		{ctlPids, "pids.max", strconv.Itoa(c.Processes)},
	} {
		data, err := os.ReadFile(filepath.Join(kernelCgroupDir(t, b, pid, w.ctl), w.file))
		if err != nil || strings.TrimSpace(string(data)) != w.want {
			t.Errorf("%s: %q, %v; want %s", w.file, data, err, w.want)
		}
	}
}

// memoryWorkers: four workers, fresh interpreters (a forked kernel's
// address space is already near RLIMIT_AS), each hold up to 300 MiB, 4
// MiB at a time, and say so after every step.
const memoryWorkers = `import subprocess, sys, time
worker = """import sys, time
held = []
for step in range(75):
    held.append(b"\\x01" * (4 << 20))
    print("worker", sys.argv[1], "holds", (step + 1) * 4, "MiB", flush=True)
    time.sleep(0.04)
time.sleep(60)
"""
workers = [subprocess.Popen([sys.executable, "-c", worker, str(i)], stdout=sys.stdout) for i in range(4)]
time.sleep(120)
`

// heldTogether reads memoryWorkers' output: the most its workers held
// together while all of them were alive, as the sum of what each said it
// held last, and each worker's last word. A worker the OOM killer ended
// frees what it held and says nothing more, and the others may then hold
// more: only lines before the first worker's last line count, when each
// holds at least what it said.
func heldTogether(out string) (int, map[string]int) {
	type said struct {
		worker string
		mib    int
	}
	var lines []said
	last := make(map[string]int) // worker → index of its last line
	for _, m := range regexp.MustCompile(`worker (\d) holds (\d+) MiB`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		last[m[1]] = len(lines)
		lines = append(lines, said{m[1], n})
	}
	end := len(lines)
	for _, i := range last {
		end = min(end, i+1)
	}
	held := make(map[string]int)
	most := 0
	for _, l := range lines[:end] {
		held[l.worker] = l.mib
		sum := 0
		for _, n := range held {
			sum += n
		}
		most = max(most, sum)
	}
	return most, held
}

// TestKernelCgroupMemory: four workers of a kernel, each under the
// per-process limit but 1.2 GiB together, cannot hold more than the
// kernel's 512 MiB between them, by what they said they held (the
// accountant alone let 517 to 539 MiB through); the kernel is ended with
// ErrMemoryLimit, and its cgroups removed.
func TestKernelCgroupMemory(t *testing.T) {
	const limit = 512 << 20
	withStartModes(t, func(c *Config) { c.Memory = limit }, []string{ctlMemory}, func(t *testing.T, b *Bwrap, start func(string) *kernel) {
		k := start(memoryWorkers)
		dirs := kernelCgroupDirs(t, b, k.p.Pid())
		err := k.wait(t, 2*time.Minute)
		if !errors.Is(err, ErrMemoryLimit) || !strings.Contains(err.Error(), "MiB together") || !strings.Contains(err.Error(), "its cgroup") {
			t.Fatalf("kernel ended with %v, want ErrMemoryLimit from its cgroup\n%s\n%s", err, kernelOut(k), k.out)
		}
		total, held := heldTogether(kernelOut(k))
		if total > limit>>20 {
			t.Errorf("the workers held %d MiB together, limit %d MiB", total, limit>>20)
		}
		t.Logf("the workers held %d MiB together at most (%v); %v", total, held, err)
		checkCgroupsGone(t, k, dirs)
	})
}

// shmWorkers: four workers write 300 MiB each (under RLIMIT_FSIZE) to files in /dev/shm (the
// kernel's tmpfs, which killing a writer does not free), 4 MiB at a time.
const shmWorkers = `import os, time
for i in range(4):
    if os.fork() == 0:
        with open("/dev/shm/w%d" % i, "wb") as f:
            for step in range(75):
                f.write(b"\\x01" * (4 << 20))
                f.flush()
        print("worker", i, "wrote all", flush=True)
        time.sleep(60)
        os._exit(0)
time.sleep(120)
`

// TestKernelCgroupMemoryCountsFiles: the files a kernel's processes write
// to its tmpfs count against its memory: four writers with 1.2 GiB of
// room on the tmpfs end with at most the kernel's 512 MiB there, where
// the accountant (which counts processes' pages only) let them write it
// all; the kernel is ended with ErrMemoryLimit.
func TestKernelCgroupMemoryCountsFiles(t *testing.T) {
	const limit = 512 << 20
	withStartModes(t, func(c *Config) { c.Memory, c.Disk, c.FileSize = limit, 1300<<20, 1<<30 }, []string{ctlMemory}, func(t *testing.T, b *Bwrap, start func(string) *kernel) {
		k := start(shmWorkers)
		b.mu.Lock()
		shm := b.slots[k.req.WorkDir].scratch.path(subShm)
		b.mu.Unlock()
		err := k.wait(t, 2*time.Minute)
		var total int64
		entries, _ := os.ReadDir(shm)
		for _, e := range entries {
			if info, err := e.Info(); err == nil {
				total += info.Size()
			}
		}
		if total > limit {
			t.Errorf("the workers wrote %d MiB to the kernel's tmpfs, memory limit %d MiB (%v)", total>>20, limit>>20, err)
		}
		if !errors.Is(err, ErrMemoryLimit) {
			t.Errorf("kernel ended with %v, want ErrMemoryLimit\n%s\n%s", err, kernelOut(k), k.out)
		}
		t.Logf("the workers wrote %d MiB together; %v", total>>20, err)
	})
}

// autoReapedWorkers: a process that ignores SIGCHLD (its children are
// reaped by the host's kernel, into no one's cutime) runs 120 workers one
// after another, each burning 50 ms of CPU: 6 s in all.
const autoReapedWorkers = `import os, signal, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for n in range(120):
    pid = os.fork()
    if pid == 0:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        os._exit(0)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
print("all workers done", flush=True)
time.sleep(60)
`

// TestKernelCgroupCPUAutoReaped: CPU of workers whose parent ignores
// SIGCHLD counts against CPUTime: the kernel is ended at its 2 s, before
// its workers' 6 s (the accountant, which sees only what it catches
// alive, let them all finish).
func TestKernelCgroupCPUAutoReaped(t *testing.T) {
	withStartModes(t, func(c *Config) { c.CPUTime, c.CPUShare = 2*time.Second, 0 }, []string{ctlCPUUsage}, func(t *testing.T, b *Bwrap, start func(string) *kernel) {
		k := start(autoReapedWorkers)
		dirs := kernelCgroupDirs(t, b, k.p.Pid())
		err := k.wait(t, 3*time.Minute)
		if !errors.Is(err, ErrCPULimit) || !strings.Contains(err.Error(), "counted by its cgroup") {
			t.Fatalf("kernel ended with %v, want ErrCPULimit from its cgroup\n%s", err, k.out)
		}
		if strings.Contains(kernelOut(k), "all workers done") {
			t.Errorf("all 120 workers ran (6 s of CPU) under a 2 s limit")
		}
		t.Log(err)
		checkCgroupsGone(t, k, dirs)
	})
}

// TestKernelCgroupForkBomb: a fork bomb meets pids.max (it counts the
// whole sandbox, so it comes before RLIMIT_NPROC, which counts the uid
// inside it); the kernel and its neighbour run on.
func TestKernelCgroupForkBomb(t *testing.T) {
	t.Parallel()
	const limit = 30
	b := newCgroupBwrap(t, func(c *Config) { c.Processes = limit }, ctlPids)
	witness := startWitness(t, b)
	k := launchPy(t, b, lingering(hostile(t, "forkbomb.py", nil), 120*time.Second))
	var r struct {
		Errno  string
		Forked int
	}
	k.results(t, 30*time.Second, &r)
	dir := kernelCgroupDir(t, b, k.p.Pid(), ctlPids)
	data, err := os.ReadFile(filepath.Join(dir, "pids.events"))
	if err != nil {
		t.Fatal(err)
	}
	// pids.max and the uid's RLIMIT_NPROC are both at the limit, and which
	// one a fork meets first varies from run to run (a clean CI run saw
	// pids.events "max 0"): either stops the bomb, and the cgroup never
	// held more than its pids.max (pids.peak, below).
	if hits, err := parseFlatKeyed(data, "max"); err != nil {
		t.Errorf("pids.events: %q: %v", data, err)
	} else if hits == 0 {
		t.Logf("pids.events %q: RLIMIT_NPROC stopped the bomb before pids.max", data)
	}
	if r.Errno != "EAGAIN" || r.Forked >= limit {
		t.Errorf("fork bomb: %s after %d forks (limit %d)", r.Errno, r.Forked, limit)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "pids.peak")); err == nil {
		if peak, _ := strconv.Atoi(strings.TrimSpace(string(data))); peak > limit {
			t.Errorf("pids.peak %d over pids.max %d", peak, limit)
		}
	}
	witness.checkAlive(t)
	k.p.Kill()
	checkCgroupsGone(t, k, []string{dir})
}

// busyWorkers: four workers spin until killed.
const busyWorkers = `import os, time
for i in range(4):
    if os.fork() == 0:
        while True:
            pass
print("workers started", flush=True)
time.sleep(600)
`

// TestKernelCgroupCPUShare: four busy workers of a kernel with a quarter
// of a core get about a quarter of a core, by the CPU its cgroup counted
// over a few seconds (they would take both cores of this machine), and
// are throttled, not ended.
func TestKernelCgroupCPUShare(t *testing.T) {
	const share = 0.25
	withStartModes(t, func(c *Config) { c.CPUShare = share }, []string{ctlCPUShare, ctlCPUUsage}, func(t *testing.T, b *Bwrap, start func(string) *kernel) {
		k := start(busyWorkers)
		waitOut(t, k, "workers started")
		cg := &kernelCgroup{v2: b.cgroups.v2, dirs: map[string]string{
			ctlCPUUsage: kernelCgroupDir(t, b, k.p.Pid(), ctlCPUUsage),
			ctlCPUShare: kernelCgroupDir(t, b, k.p.Pid(), ctlCPUShare),
		}}
		const window = 3 * time.Second
		cpu0, err := cg.cpuUsage()
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		select {
		case <-k.p.Done():
			t.Fatalf("kernel ended: %v\n%s", k.p.Err(), k.out)
		case <-time.After(window):
		}
		cpu1, err := cg.cpuUsage()
		if err != nil {
			t.Fatal(err)
		}
		cores := (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
		throttled, err := cg.statField(ctlCPUShare, "cpu.stat", "nr_throttled")
		if err != nil || throttled == 0 {
			t.Errorf("cpu.stat nr_throttled: %d, %v", throttled, err)
		}
		// One period's quota may come on top of the share in any window.
		if most := share*1.2 + share*cfsPeriod.Seconds()/window.Seconds(); cores > most {
			t.Errorf("four busy workers used %.2f cores, share %.2f (at most %.2f)", cores, share, most)
		}
		t.Logf("four busy workers used %.2f cores with a share of %.2f (throttled %d times)", cores, share, throttled)
		if isDone(k.p) {
			t.Fatalf("kernel ended: %v", k.p.Err())
		}
		dirs := kernelCgroupDirs(t, b, k.p.Pid())
		k.p.Kill()
		checkCgroupsGone(t, k, dirs)
	})
}

// TestKernelCgroupsSweptAtStart: a kernel cgroup a crashed gateway left
// (its uid's lock free, older than staleAge) is removed when the next one
// starts; one just made (perhaps by a gateway that cannot share our uid
// locks), or not named as a kernel's, is left alone.
func TestKernelCgroupsSweptAtStart(t *testing.T) {
	b := newCgroupBwrap(t, nil, ctlPids)
	parent := b.cgroups.parents[ctlPids]
	uid := b.cfg.UIDBase + b.cfg.UIDCount - 1
	stale := filepath.Join(parent, kernelCgroupName(uid, "/x/stale", 1))
	young := filepath.Join(parent, kernelCgroupName(uid, "/x/young", 1))
	other := filepath.Join(parent, "someone-else")
	for _, d := range []string{stale, young, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(d)
	}
	old := time.Now().Add(-2 * staleAge)
	for _, d := range []string{stale, other} {
		if err := os.Chtimes(d, old, old); err != nil {
			t.Fatal(err)
		}
	}
	newCgroupBwrap(t, nil, ctlPids)
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale kernel cgroup %s survived a start (%v)", stale, err)
	}
	for _, d := range []string{young, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}

func TestCgroupDirs(t *testing.T) {
	mountinfo := []byte(`25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw
26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 /process_api /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
29 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
`)
	own := parseProcCgroup([]byte("4:memory:/process_api/abc\n3:cpu,cpuacct:/gw\n2:pids:/\n0::/\n"))
	dirs, v2, notes := cgroupDirs(parseMountInfo(mountinfo), own)
	want := map[string]string{
		ctlMemory: "/sys/fs/cgroup/memory/abc", ctlCPUShare: "/sys/fs/cgroup/cpu,cpuacct/gw",
		ctlCPUUsage: "/sys/fs/cgroup/cpu,cpuacct/gw", ctlPids: "/sys/fs/cgroup/pids",
	}
	if v2 || len(notes) != 0 || fmt.Sprint(dirs) != fmt.Sprint(want) {
		t.Errorf("cgroupDirs = %v, v2 %v, notes %v; want %v", dirs, v2, notes, want)
	}
	// A cgroup outside the mount's root cannot be reached.
	own[ctlMemory] = "/elsewhere"
	if dirs, _, notes := cgroupDirs(parseMountInfo(mountinfo), own); dirs[ctlMemory] != "" || notes[ctlMemory] == "" {
		t.Errorf("memory outside the mount: %v, %v", dirs, notes)
	}
}

func TestParseFlatKeyed(t *testing.T) {
	data := []byte("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
	if n, err := parseFlatKeyed(data, "oom_kill"); err != nil || n != 3 {
		t.Errorf("oom_kill = %d, %v", n, err)
	}
	for _, bad := range []string{"", "oom_kill x\n", "oom_kill -1\n", "oom_kill_disable 0\n"} {
		if _, err := parseFlatKeyed([]byte(bad), "oom_kill"); err == nil {
			t.Errorf("parseFlatKeyed(%q) accepted", bad)
		}
	}
}

// FuzzCgroupFiles: the decoders of /proc/self/mountinfo, /proc/self/cgroup
// and cgroups' flat-keyed files refuse or decode anything, never panic.
func FuzzCgroupFiles(f *testing.F) {
	f.Add([]byte("27 25 0:24 /a /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), []byte("4:memory:/a/b\n0::/\n"), []byte("oom_kill 1\n"))
	f.Add([]byte(" - cgroup2\n - \n"), []byte(":::\n1:x"), []byte("a b c\n"))
	f.Fuzz(func(t *testing.T, mountinfo, own, flat []byte) {
		mounts := parseMountInfo(mountinfo)
		paths := parseProcCgroup(own)
		for _, p := range paths {
			if !strings.HasPrefix(p, "/") {
				t.Fatalf("cgroup path %q", p)
			}
		}
		dirs, _, _ := cgroupDirs(mounts, paths)
		for ctl, d := range dirs {
			below := false
			for _, m := range mounts {
				below = below || strings.HasPrefix(d, filepath.Clean(m.point))
			}
			if !below {
				t.Fatalf("%s cgroup %q is below no cgroup mount", ctl, d)
			}
		}
		if n, err := parseFlatKeyed(flat, "oom_kill"); err == nil && n < 0 {
			t.Fatalf("negative count %d", n)
		}
	})
}

// BenchmarkCgroupLook: what the accountant's look at a kernel's cgroup
// (its CPU usage and OOM kills) costs the gateway, every LimitEvery, in
// place of a walk of its tree in /proc (BenchmarkTreeSample).
func BenchmarkCgroupLook(b *testing.B) {
	bw := newBwrap(b, nil)
	if !bw.cgroups.holds(ctlMemory) || !bw.cgroups.holds(ctlCPUUsage) {
		b.Skip("no memory and CPU usage cgroups here")
	}
	k := launchPy(b, bw, "import time\ntime.sleep(600)")
	cg := &kernelCgroup{v2: bw.cgroups.v2, dirs: map[string]string{}}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", k.p.Pid()))
	if err != nil {
		b.Fatal(err)
	}
	own := parseProcCgroup(data)
	for _, ctl := range []string{ctlMemory, ctlCPUUsage} {
		key := ctl
		if cg.v2 {
			key = ""
		}
		cg.dirs[ctl] = filepath.Join(bw.cgroups.parents[ctl], filepath.Base(own[key]))
	}
	l := treeLimits{cpu: time.Hour, memory: 1 << 30, cg: cg}
	for b.Loop() {
		if err := l.overCgroupLimit(); err != nil {
			b.Fatal(err)
		}
	}
}
