package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// withoutCgroups has b's kernels held by the accountant alone, as on a
// host without cgroups: the tests of the accountant use it.
func withoutCgroups(b *Bwrap) *Bwrap {
	b.cgroups = nil
	return b
}

// TestTreeAccountCountsEndedProcesses replays samples of a tree through
// the accountant: a process's time counts once whether it lives, ends
// and is reaped by its parent, ends unseen, or is adopted by pid 1.
func TestTreeAccountCountsEndedProcesses(t *testing.T) {
	// own and reaped in ticks; start 1 unless a pid is reused.
	ps := func(pid, ppid int, own, reaped int64) procStat {
		return procStat{pid: pid, ppid: ppid, own: own, reaped: reaped, start: 1, state: 'R'}
	}
	for name, tc := range map[string]struct {
		samples [][]procStat
		want    int64
	}{
		"live processes": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 30, 0), ps(3, 2, 5, 0)},
		}, 1 + 30 + 5},
		// 3 ran 50 ticks, 20 of them seen; 2 waited for it.
		"reaped by its parent": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0), ps(3, 2, 20, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 10, 50)},
		}, 1 + 10 + 50},
		// A worker that lived and ended between two samples.
		"never seen": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 10, 40)},
		}, 1 + 10 + 40},
		// 2 ended, its child 3 (reaped children of its own: 7) was
		// adopted by pid 1 and ended too; 1 waited for both.
		"orphan reaped by pid 1": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0), ps(3, 2, 20, 7)},
			{ps(1, 0, 1, 12+25)},
		}, 1 + 12 + 25},
		// 1 is the root (outer bwrap), 2 the sandbox's pid 1, 3 the
		// kernel; a daemon's double fork: 4 ended (3 waited: 8 ticks), and
		// so did its child 5, adopted and reaped by 2 (30 ticks).
		"double fork": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 1, 0), ps(3, 2, 10, 0), ps(4, 3, 5, 0), ps(5, 4, 20, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 1, 30), ps(3, 2, 10, 8)},
		}, 1 + 1 + 10 + 8 + 30},
		// The parent ignores SIGCHLD: the worker's time since it was last
		// seen is lost, what was seen stays.
		"auto-reaped": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0), ps(3, 2, 20, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 15, 0)},
		}, 1 + 15 + 20},
		// pid 3 ended (reaped, 20 ticks) and a new process got its pid.
		"reused pid": {[][]procStat{
			{ps(1, 0, 1, 0), ps(2, 1, 10, 0), ps(3, 2, 20, 0)},
			{ps(1, 0, 1, 0), ps(2, 1, 10, 20), {pid: 3, ppid: 2, own: 4, start: 9}},
		}, 1 + 10 + 20 + 4},
	} {
		t.Run(name, func(t *testing.T) {
			a := &treeAccount{root: 1}
			for _, s := range tc.samples {
				a.add(s)
			}
			if a.ticks != tc.want {
				t.Errorf("counted %d ticks, want %d", a.ticks, tc.want)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	// The command name is the process's own: it may hold ") " and digits.
	line := "4242 (a) R 1 2 3) S 77 4242 4242 0 -1 4194560 100 0 0 0 150 25 30 5 20 0 3 0 123456 52428800 2048 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0\n"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{pid: 4242, ppid: 77, state: 'S', own: 175, reaped: 35, start: 123456, rss: 2048 * int64(os.Getpagesize())}
	if s != want {
		t.Errorf("parsed %+v, want %+v", s, want)
	}
	for _, bad := range []string{"", "4242 (x", "x (y) R 1", "1 (y) R 1 2 3", strings.Replace(line, " 150 ", " -150 ", 1)} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

// FuzzParseStat: any bytes are refused or decoded, never a panic; and a
// command name, whatever it holds, does not change the numbers read.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (python3) S 0 1 1 0 -1 4194560 1 0 0 0 3 4 5 6 20 0 1 0 99 1000 10 0"), "x) R 9 9")
	f.Add([]byte("7 (a b) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23"), "")
	f.Fuzz(func(t *testing.T, data []byte, comm string) {
		_, _ = parseStat(data)
		line := fmt.Sprintf("31 (%s) S 2 1 1 0 -1 0 0 0 0 0 11 12 13 14 20 0 1 0 4000 1000 7 0", comm)
		s, err := parseStat([]byte(line))
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if s.pid != 31 || s.ppid != 2 || s.own != 23 || s.reaped != 27 || s.start != 4000 {
			t.Fatalf("%q: parsed %+v", line, s)
		}
	})
}

func TestParsePss(t *testing.T) {
	rollup := "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  10240 kB\nPss:   4096 kB\nPss_Anon: 100 kB\n"
	if pss, err := parsePss([]byte(rollup)); err != nil || pss != 4096<<10 {
		t.Errorf("parsePss = %d, %v; want %d", pss, err, 4096<<10)
	}
	for _, bad := range []string{"", "Rss: 1 kB\n", "Pss: x kB\n", "Pss: -5 kB\n", "Pss: 5 MB\n"} {
		if _, err := parsePss([]byte(bad)); err == nil {
			t.Errorf("parsePss(%q) accepted", bad)
		}
	}
}

func FuzzParsePss(f *testing.F) {
	f.Add([]byte("Rss: 1 kB\nPss: 2 kB\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if pss, err := parsePss(data); err == nil && (pss < 0 || pss%1024 != 0) {
			t.Fatalf("parsePss(%q) = %d", data, pss)
		}
	})
}

// treeCPU is the CPU time of pid's tree as a bystander reads it: the
// processes' own times and those of the children they reaped.
func treeCPU(pid int) time.Duration {
	var ticks int64
	for _, p := range descendants(pid) {
		if s, err := readStat(p); err == nil {
			ticks += s.own + s.reaped
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// workersScript starts n worker processes (fork) that each run body (a
// Python statement, indented by the caller's choice of one line), prints
// "workers started", and waits for them.
func workersScript(n int, body string) string {
	return fmt.Sprintf(`
import os, sys, time
pids = []
for i in range(%d):
    pid = os.fork()
    if pid == 0:
        try:
            %s
        finally:
            os._exit(0)
    pids.append(pid)
print("workers started", flush=True)
for pid in pids:
    os.waitpid(pid, 0)
print("workers done", flush=True)
`, n, body)
}

// TestTreeMemoryLimit: four workers that each stay under the per-process
// limit (RLIMIT_AS 512 MiB) but together would hold 1.2 GiB end the kernel
// with ErrMemoryLimit before they all get there.
func TestTreeMemoryLimit(t *testing.T) {
	t.Parallel()
	const limit = 512 << 20
	b := withoutCgroups(newBwrap(t, func(c *Config) { c.Memory = limit }))
	witness := startWitness(t, b)
	// 300 MiB each in 4 MiB steps, written (resident), 25 steps a second:
	// 400 MiB/s for the four together, past the limit in about a second,
	// a second and a half before all of it.
	k := launchPy(t, b, workersScript(4, `held = []
            for step in range(75):
                held.append(b"\x01" * (4 << 20))
                if step % 25 == 24:
                    print("worker", i, "holds", (step + 1) * 4, "MiB", flush=True)
                time.sleep(0.04)
            print("worker", i, "holds all", flush=True)
            time.sleep(60)`))
	err := k.wait(t, 2*time.Minute)
	if !errors.Is(err, ErrMemoryLimit) {
		t.Fatalf("kernel ended with %v, want ErrMemoryLimit\n%s", err, k.out)
	}
	if n := strings.Count(k.out.String(), "holds all"); n == 4 {
		t.Errorf("all four workers held 300 MiB before the kernel was ended:\n%s", k.out)
	}
	t.Logf("%v\n%s", err, k.out)
	witness.checkAlive(t)
}

// forkedKernelWithoutCgroups starts a forked ipykernel whose limits only
// the /proc accountant holds: CPU time cpu per process and per tree,
// memory out of the way, no CPU share. It runs its test in parallel.
func forkedKernelWithoutCgroups(t *testing.T, cpu time.Duration) *ipyKernel {
	t.Helper()
	skipWithoutIPyKernel(t)
	t.Parallel()
	b := withoutCgroups(newBwrap(t, func(c *Config) { c.CPUTime, c.Memory, c.CPUShare = cpu, 1<<30, 0 }))
	t.Cleanup(b.Close)
	runRoot, workRoot := poolDirs(t)
	k := startIPyKernel(t, b, runRoot, workRoot)
	if len(b.Templates()) == 0 {
		t.Fatal("the kernel was not forked")
	}
	return k
}

// TestTreeCPULimitForked: a forked kernel whose workers share the work
// keeps running while its tree is under CPUTime, and is ended with
// ErrCPULimit once the tree's total is over, though no process of it is
// (RLIMIT_CPU is the same 3 s each).
func TestTreeCPULimitForked(t *testing.T) {
	const limit = 3 * time.Second
	k := forkedKernelWithoutCgroups(t, limit)
	// Well behaved: two workers of 100 MiB each for a second, a little
	// CPU; the kernel goes on.
	k.cell(t, workersScript(2, `held = b"\x01" * (100 << 20)
            time.sleep(1)`))
	k.cell(t, "print('still here')")
	before := treeCPU(k.p.Pid())
	// Four workers burn CPU; the cell returns at once. Each would take
	// 3 s of CPU before its own RLIMIT_CPU; the tree has 3 s in all.
	code := `import os
for i in range(4):
    if os.fork() == 0:
        try:
            while True:
                pass
        finally:
            os._exit(0)
print("burning")`
	k.cell(t, code)
	var last time.Duration
	deadline := time.After(2 * time.Minute)
	for done := false; !done; {
		if cpu := treeCPU(k.p.Pid()); cpu > last {
			last = cpu
		}
		select {
		case <-k.p.Done():
			done = true
		case <-deadline:
			t.Fatalf("kernel still runs, its tree used %v of CPU (limit %v)", last, limit)
		case <-time.After(20 * time.Millisecond):
		}
	}
	err := k.p.Err()
	if !errors.Is(err, ErrCPULimit) || !strings.Contains(err.Error(), "together") {
		t.Fatalf("kernel ended with %v, want ErrCPULimit for its tree\n%s", err, k.out)
	}
	// One sampling period at two cores is the margin; the rest is slack
	// for a loaded machine, where the accountant may be late.
	if margin := 2 * time.Second; last > limit+margin {
		t.Errorf("the tree used %v of CPU before it was ended, limit %v + margin %v", last, limit, margin)
	}
	t.Logf("before the workers: %v; the most a bystander saw: %v; %v", before, last, err)
}

// TestTreeCPULimitForkedOrphans: what a forked kernel's orphans use counts
// too. Its workers are daemons (a double fork: their parent exits at
// once), adopted by the kernel's pid 1, which is not below the kernel;
// the tree is still ended with ErrCPULimit once their total is over, long
// before any of them meets its own RLIMIT_CPU.
func TestTreeCPULimitForkedOrphans(t *testing.T) {
	k := forkedKernelWithoutCgroups(t, 3*time.Second)
	k.cell(t, `import os
for i in range(4):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            try:
                while True:
                    pass
            finally:
                os._exit(0)
        os._exit(0)
    os.wait()
print("daemons started")`)
	select {
	case <-k.p.Done():
	case <-time.After(2 * time.Minute):
		t.Fatalf("kernel still runs, its orphans unaccounted: %v of CPU in its own tree", treeCPU(k.p.Pid()))
	}
	if err := k.p.Err(); !errors.Is(err, ErrCPULimit) {
		t.Fatalf("kernel ended with %v, want ErrCPULimit for its tree\n%s", err, k.out)
	}
}

// TestTreeCPUShare: four busy workers get the kernel's share of the
// machine (a quarter of a core here), not the two cores they would take
// on an idle machine, as a bystander measures in /proc; the kernel is
// slowed, not ended. (The share is small so that even on a machine as
// busy as a test run makes it, the workers would take more.)
func TestTreeCPUShare(t *testing.T) {
	t.Parallel()
	const share = 0.25
	b := withoutCgroups(newBwrap(t, func(c *Config) { c.CPUShare = share }))
	witness := startWitness(t, b)
	k := launchPy(t, b, workersScript(4, `while True:
                pass`))
	k.waitFor(t, "workers started", 30*time.Second)
	// Past the second's worth the kernel may run ahead.
	const window = 5 * time.Second
	cpu0, t0 := treeCPU(k.p.Pid()), time.Now()
	select {
	case <-k.p.Done():
		t.Fatalf("kernel ended: %v\n%s", k.p.Err(), k.out)
	case <-time.After(window):
	}
	cpu1, t1 := treeCPU(k.p.Pid()), time.Now()
	witness.checkAlive(t)
	if isDone(k.p) {
		t.Fatalf("kernel ended: %v\n%s", k.p.Err(), k.out)
	}
	cores := (cpu1 - cpu0).Seconds() / t1.Sub(t0).Seconds()
	// A second's worth of share may come on top, in any window.
	if most := share*1.2 + share*time.Second.Seconds()/window.Seconds(); cores > most {
		t.Errorf("four busy workers used %.2f cores over %v, share %.2f (at most %.2f)", cores, window, share, most)
	}
	t.Logf("four busy workers used %.2f cores over %v with a share of %.2f", cores, t1.Sub(t0).Round(time.Millisecond), share)
}

// BenchmarkTreeSample: what one sample of a kernel's tree costs the
// gateway, for a tree shaped like an idle ipykernel's and more: the two
// bwraps, a kernel with six threads, two worker processes; and what its
// PSS costs, read only when the resident sets are over the limit.
func BenchmarkTreeSample(b *testing.B) {
	bw := newBwrap(b, nil)
	k := launchPy(b, bw, `
import os, threading, time
for _ in range(6):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
for _ in range(2):
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
print("ready", flush=True)
time.sleep(600)
`)
	k.waitFor(b, "ready", 30*time.Second)
	root, err := readStat(k.p.Pid())
	if err != nil {
		b.Fatal(err)
	}
	a := &treeAccount{root: k.p.Pid(), rootStart: root.start}
	var procs []procStat
	b.Run("sample", func(b *testing.B) {
		for b.Loop() {
			var err error
			if procs, err = a.sample(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(procs)), "processes")
	})
	b.Run("pss", func(b *testing.B) {
		pids := make([]int, len(procs))
		for i, s := range procs {
			pids[i] = s.pid
		}
		for b.Loop() {
			if _, err := pssOf(pids); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestPSSReadingDue(t *testing.T) {
	t0 := time.Now()
	last := pssReading{rss: 800 << 20, pss: 300 << 20, at: t0}
	const limit = 512 << 20
	for _, c := range []struct {
		name  string
		r     pssReading
		rss   int64
		after time.Duration
		want  bool
	}{
		{"never read", pssReading{}, 600 << 20, 0, true},
		{"grown less than the room left", last, 1000 << 20, time.Second, false},
		{"grown more than the room left", last, 1013 << 20, time.Second, true},
		{"shrunk", last, 600 << 20, time.Second, false},
		{"old reading", last, 800 << 20, pssAgain, true},
	} {
		if got := c.r.due(c.rss, limit, t0.Add(c.after)); got != c.want {
			t.Errorf("%s: due = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestTreeSharedMemoryIsCountedOnce: four workers forked after their
// parent wrote 200 MiB share those pages: their resident sets add up to
// a gigabyte, over the 512 MiB limit, but the tree holds about 200 MiB,
// and the kernel is not ended.
func TestTreeSharedMemoryIsCountedOnce(t *testing.T) {
	t.Parallel()
	b := withoutCgroups(newBwrap(t, func(c *Config) { c.Memory = 512 << 20 }))
	k := launchPy(t, b, `held = b"\x01" * (200 << 20)
`+workersScript(4, `assert held[-1] == 1
            print("worker", i, "reads", flush=True)
            time.sleep(2)`))
	k.waitFor(t, "workers started", 30*time.Second)
	var rss int64
	for _, pid := range descendants(k.p.Pid()) {
		if s, err := readStat(pid); err == nil {
			rss += s.rss
		}
	}
	pss, err := TreeMemory(k.p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the tree's resident sets add up to %d MiB, its PSS %d MiB", rss>>20, pss>>20)
	if err := k.wait(t, time.Minute); err != nil {
		t.Fatalf("kernel ended with %v\n%s", err, k.out)
	}
	if !strings.Contains(k.out.String(), "workers done") {
		t.Errorf("workers did not finish:\n%s", k.out)
	}
}

// TestTreeCPULimitCountsEndedWorkers: workers that each burn a tenth of a
// second and end, one after another, each far under the per-process
// limit and most of them never seen alive by a sample, still add up: the
// kernel is ended at its 2 s, before the 10 s they would take.
func TestTreeCPULimitCountsEndedWorkers(t *testing.T) {
	t.Parallel()
	b := withoutCgroups(newBwrap(t, func(c *Config) { c.CPUTime, c.CPUShare = 2*time.Second, 0 }))
	k := launchPy(t, b, `
import os, time
for n in range(100):
    pid = os.fork()
    if pid == 0:
        end = time.process_time() + 0.1
        while time.process_time() < end:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
print("all workers done", flush=True)
`)
	err := k.wait(t, 2*time.Minute)
	if !errors.Is(err, ErrCPULimit) || !strings.Contains(err.Error(), "together") {
		t.Fatalf("kernel ended with %v, want ErrCPULimit for its tree\n%s", err, k.out)
	}
	t.Log(err)
}

// TestProcessGone: reading a process that does not exist tells the
// accountant its tree ended; its own process is there.
func TestProcessGone(t *testing.T) {
	if _, err := readStat(1<<22 + 1); !processGone(err) { // above pid_max's ceiling
		t.Errorf("a process that cannot exist: %v, not gone", err)
	}
	s, err := readStat(os.Getpid())
	if err != nil || s.pid != os.Getpid() || s.start == 0 {
		t.Errorf("own process: %+v, %v", s, err)
	}
}
