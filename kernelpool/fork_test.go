package kernelpool

import (
	"context"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// Kernels forked from the fork server's template are sandboxed as cold
// bwrap kernels are (own uid from the range, no network, own pid
// namespace), share nothing random with each other, and still interrupt,
// restart and shut down.
func TestForkedKernels(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root to switch kernels to their own uids")
	}
	specs := installedSpecs(t)
	scfg := sandbox.DefaultConfig()
	scfg.Fork = true
	templateLog := &lockedWriter{t: t}
	scfg.ForkLog = templateLog
	launcher, err := sandbox.NewBwrap(scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	reg := prometheus.NewRegistry()
	p, err := New(Config{Specs: specs, Ready: map[string]int{"python3": 2}, MaxKernels: 4, Kernel: cfg, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	const probe = `import os, json, random, secrets, uuid, numpy
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "net": sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else [],
  "procs": sorted(int(x) for x in os.listdir("/proc") if x.isdigit()), "cwd": os.getcwd(),
  "random": random.random(), "numpy": float(numpy.random.random()), "secret": secrets.token_hex(8), "uuid": str(uuid.uuid4()),
  "forked": "numpy" in __import__("sys").modules}))`
	type report struct {
		UID    int     `json:"uid"`
		Pid    int     `json:"pid"`
		Procs  []int   `json:"procs"`
		Cwd    string  `json:"cwd"`
		Random float64 `json:"random"`
		Numpy  float64 `json:"numpy"`
		Secret string  `json:"secret"`
		UUID   string  `json:"uuid"`
	}
	var reports []report
	var kernels []*Kernel
	for range 2 {
		k := lease(t, p, "python3")
		kernels = append(kernels, k)
		out, _ := run(t, k, probe)
		var r report
		if err := json.Unmarshal([]byte(strings.TrimSpace(out.stdout)), &r); err != nil {
			t.Fatalf("probe: %+v: %v (template: %s)", out, err, templateLog.String())
		}
		if r.UID < scfg.UIDBase || r.UID >= scfg.UIDBase+scfg.UIDCount {
			t.Errorf("forked kernel runs as uid %d, not one of %d..", r.UID, scfg.UIDBase)
		}
		if r.Pid != 2 || len(r.Procs) > 3 {
			t.Errorf("forked kernel is pid %d and sees processes %v: want its own pid namespace", r.Pid, r.Procs)
		}
		if r.Cwd != k.WorkDir {
			t.Errorf("cwd %q, want the work dir %q", r.Cwd, k.WorkDir)
		}
		reports = append(reports, r)
	}
	a, b := reports[0], reports[1]
	if a.UID == b.UID || a.Random == b.Random || a.Numpy == b.Numpy || a.Secret == b.Secret || a.UUID == b.UUID {
		t.Errorf("two forks share state: %+v and %+v", a, b)
	}
	if !strings.Contains(launcher.Describe(), "forked") || strings.Contains(launcher.Describe(), "last fork failure") {
		t.Errorf("the kernels were not forked: %s (template: %s)", launcher.Describe(), templateLog.String())
	}
	checkTemplateMetrics(t, reg, len(kernels))
	k := kernels[0]
	if out, _ := run(t, k, "open('made-here.txt', 'w').write('x')"); out.ename != "" {
		t.Fatalf("write in the work dir: %+v", out)
	}
	if data, err := os.ReadFile(k.WorkDir + "/made-here.txt"); err != nil || string(data) != "x" {
		t.Errorf("the gateway does not see the kernel's file: %q %v", data, err)
	}
	interruptAndRestart(t, k, "a forked kernel")
	kernels[1].Shutdown()
	work := k.WorkDir
	k.Shutdown()
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work dir left behind: %v", err)
	}
}

// lockedWriter keeps the template's output and logs it.
type lockedWriter struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Logf("template: %s", b)
	return l.b.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// BenchmarkSandboxedStart compares, in one run, a sandboxed python3 kernel
// started cold with one forked from a template that has only imported the
// kernel machinery (forked-imports) and one forked from a template that
// has also prepared the kernel application (forked, the default): launch
// to ready (kernel info answered, warm-up done). The template's own start
// is outside the loop.
func BenchmarkSandboxedStart(b *testing.B) { benchmarkSandboxedStart(b, "python3") }

// BenchmarkSandboxedStartSage is BenchmarkSandboxedStart for SageMath
// kernels: cold, and forked from a template that has imported sage.all and
// drawn a plot.
func BenchmarkSandboxedStartSage(b *testing.B) { benchmarkSandboxedStart(b, "sagemath") }

func benchmarkSandboxedStart(b *testing.B, kernel string) {
	specs := installedSpecs(b)
	if _, ok := specs[kernel]; !ok {
		b.Skipf("no %s kernelspec installed", kernel)
	}
	modes := []startMode{{"cold", false, false}, {"forked-imports", true, false}, {"forked", true, true}}
	runStartModes(b, modes, func(b *testing.B, mode startMode, launcher *sandbox.Bwrap) {
		p := newTestPool(b, map[string]int{}, 1)
		cfg := p.cfg.Kernel
		cfg.Launcher = launcher
		cfg.Spec = specs[kernel]
		start := func() *Kernel {
			k, err := StartKernel(context.Background(), p.zctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			return k
		}
		start().Shutdown() // the template starts here, not in the loop
		for b.Loop() {
			k := start()
			b.StopTimer()
			k.Shutdown()
			b.StartTimer()
		}
		if mode.fork && strings.Contains(launcher.Describe(), "last fork failure") {
			b.Fatal(launcher.Describe())
		}
		if ts := launcher.Templates(); mode.fork && len(ts) != 1 {
			b.Fatalf("templates: %+v", ts)
		}
	})
}

// startMode is one way a sandboxed kernel starts in the benchmarks that
// compare them: cold, or forked from a template (that has prepared the
// kernel application, or only imported the machinery).
type startMode struct {
	name          string
	fork, prepare bool
}

// coldAndForked are the two ways a kernel starts with and without
// --fork: cold, and forked from a template as deployed.
func coldAndForked() []startMode { return []startMode{{"cold", false, false}, {"forked", true, true}} }

// runStartModes runs f as a sub-benchmark per mode, each with a bwrap
// launcher of its own (so each forked mode has its own template).
func runStartModes(b *testing.B, modes []startMode, f func(b *testing.B, mode startMode, launcher *sandbox.Bwrap)) {
	if os.Geteuid() != 0 {
		b.Skip("the bwrap sandbox needs root")
	}
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			scfg := sandbox.DefaultConfig()
			scfg.Fork, scfg.ForkPrepare = mode.fork, mode.prepare
			launcher, err := sandbox.NewBwrap(scfg)
			if err != nil {
				b.Fatal(err)
			}
			defer launcher.Close()
			f(b, mode, launcher)
		})
	}
}

// A kernel forked from a template that prepared the kernel application
// (and its InteractiveShell) is, seen from inside, the kernel a cold start
// makes: the same shell wired to its own kernel, history in a file of its
// own home with its saving thread, In/Out/_dh the history's lists, the
// environment, the profile directories, the magics, sys.path, the CPUs
// each of its threads may run on (the template pins a kernel's start to
// one). SQLite's journal files are left out of the directory listing:
// they exist only while the history thread is writing, in either kind of
// kernel. The template must have prepared the application and rehearsed
// a start (the pages each kernel copies at once) without failing.
func TestForkedKernelIsLikeACold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root")
	}
	const probe = `import json, os, re, sys, threading
ip = get_ipython()
hm = ip.history_manager
print(json.dumps({
  "kernel": type(ip.kernel).__name__, "parent": type(ip.parent).__name__, "shell": type(ip).__name__,
  "history": [str(hm.hist_file), hm.enabled, os.path.exists(str(hm.hist_file)), hm.save_thread is not None and hm.save_thread.is_alive()],
  "recalled": [src for _, _, src in hm.get_range(start=1, stop=4)],
  "In": In[1:], "Out": {str(k): repr(v) for k, v in Out.items()}, "last": repr(_), "count": ip.execution_count,
  "same_lists": [In is hm.input_hist_parsed, Out is hm.output_hist, _dh is hm.dir_hist, _ih is In, _oh is Out],
  "dh": [str(d) for d in _dh], "starting_dir": ip.starting_dir, "cwd": os.getcwd(),
  "env": {k: os.environ.get(k) for k in ("TERM", "CLICOLOR", "PAGER", "GIT_PAGER", "MPLBACKEND", "HOME", "PWD")},
  "profile": ip.profile_dir.location, "profile_dirs": sorted(f for f in os.listdir(ip.profile_dir.location) if not f.endswith(("-journal", "-wal", "-shm"))),
  "main": sys.modules["__main__"] is ip.user_module,
  "magics": sorted(ip.magics_manager.lsmagic()["line"]),
  "threads": sorted(re.sub(r"-\d+", "-N", t.name) for t in threading.enumerate()),
  "cpus": sorted(str(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")),
  "path": sys.path[:2],
  "session": hm.session_number,
  "matplotlib": __import__("matplotlib").get_backend(),
  "inline_hook": sorted(getattr(f, "__name__", "?") for f in ip.events.callbacks["post_execute"]),
}, sort_keys=True))`
	specs := installedSpecs(t)
	for _, name := range []string{"python3", "sagemath"} {
		spec, ok := specs[name]
		if !ok {
			t.Logf("no %s kernelspec: not compared", name)
			continue
		}
		reports := map[bool]string{}
		for _, fork := range []bool{false, true} {
			scfg := sandbox.DefaultConfig()
			scfg.Fork = fork
			templateLog := &lockedWriter{t: t}
			scfg.ForkLog = templateLog
			launcher, err := sandbox.NewBwrap(scfg)
			if err != nil {
				t.Fatal(err)
			}
			p := newTestPool(t, map[string]int{}, 1)
			cfg := p.cfg.Kernel
			cfg.Launcher = launcher
			cfg.Spec = spec
			k, err := StartKernel(context.Background(), p.zctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			run(t, k, "x = 2 + 3")
			// Plotting as a reader does: the inline backend's hook must be
			// the kernel's, as in a cold kernel.
			if out, _ := run(t, k, "import matplotlib.pyplot as plt\nplt.plot([1, 2]);"); out.ename != "" {
				t.Fatalf("%s (forked %v): plot: %+v", name, fork, out)
			}
			if out, _ := run(t, k, "x * 2"); out.result != "10" {
				t.Errorf("%s (forked %v): x * 2 = %+v", name, fork, out)
			}
			out, _ := run(t, k, probe)
			if out.ename != "" || !strings.HasPrefix(out.stdout, "{") {
				t.Fatalf("%s (forked %v): probe: %+v (template: %s)", name, fork, out, templateLog.String())
			}
			reports[fork] = strings.ReplaceAll(out.stdout, k.WorkDir, "<work dir>")
			if fork && (!strings.Contains(launcher.Describe(), "forked") || strings.Contains(launcher.Describe(), "last fork failure")) {
				t.Errorf("%s: not forked: %s (template: %s)", name, launcher.Describe(), templateLog.String())
			}
			if fork && strings.Contains(templateLog.String(), "preparing the kernel application failed") {
				t.Errorf("%s: the template did not prepare the application: %s", name, templateLog.String())
			}
			if fork && strings.Contains(templateLog.String(), "rehearsal kernel failed") {
				t.Errorf("%s: the template's rehearsal start failed: %s", name, templateLog.String())
			}
			k.Shutdown()
			launcher.Close()
		}
		var cold, forked map[string]any
		if err := json.Unmarshal([]byte(reports[false]), &cold); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(reports[true]), &forked); err != nil {
			t.Fatal(err)
		}
		if len(cold) != len(forked) {
			t.Errorf("%s: the probe saw %d things in a cold kernel, %d in a forked one", name, len(cold), len(forked))
		}
		for key, want := range cold {
			if got := forked[key]; !reflect.DeepEqual(got, want) {
				t.Errorf("%s: %s: forked %v, cold %v", name, key, got, want)
			}
		}
		// Both keep their history in memory (their home ends with them),
		// and it holds the cells run.
		if h, _ := cold["history"].([]any); len(h) == 0 || h[0] != ":memory:" {
			t.Errorf("%s: cold history %v, want it in memory", name, cold["history"])
		}
		wantCells := []any{"x = 2 + 3", "import matplotlib.pyplot as plt\nplt.plot([1, 2]);", "x * 2"}
		if !reflect.DeepEqual(cold["recalled"], wantCells) {
			t.Errorf("%s: the history recalls %q, want %q", name, cold["recalled"], wantCells)
		}
	}
}

// checkTemplateMetrics reads the templates' series as /metrics serves
// them: one python template serving, with at least the leased kernels
// running and forked, and a memory of its own.
func checkTemplateMetrics(t *testing.T, reg *prometheus.Registry, leased int) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += "," + l.GetName() + "=" + l.GetValue()
			}
			got[f.GetName()+labels] = m.GetGauge().GetValue()
		}
	}
	if n := got["cellgate_fork_templates,kind=python,state=serving"]; n != 1 {
		t.Errorf("cellgate_fork_templates serving python = %v, want 1 (all: %v)", n, got)
	}
	if n := got["cellgate_fork_template_kernels,kind=python,state=serving"]; n < float64(leased) {
		t.Errorf("cellgate_fork_template_kernels = %v with %d kernels leased", n, leased)
	}
	if n := got["cellgate_fork_template_forks,kind=python"]; n < float64(leased) {
		t.Errorf("cellgate_fork_template_forks = %v with %d kernels leased", n, leased)
	}
	if n := got["cellgate_fork_template_memory_bytes,kind=python,state=serving"]; n < 1<<20 {
		t.Errorf("cellgate_fork_template_memory_bytes = %v: want the template's PSS", n)
	}
}

// BenchmarkFirstPlot times a reader's first plot on a fresh sandboxed
// python3 kernel (import pyplot, plot, the inline backend's PNG), started
// cold and forked from the template (which has imported matplotlib and
// drawn a throw-away figure). The kernel's start is outside the timing.
func BenchmarkFirstPlot(b *testing.B) {
	specs := installedSpecs(b)
	runStartModes(b, coldAndForked(), func(b *testing.B, _ startMode, launcher *sandbox.Bwrap) {
		p := newTestPool(b, map[string]int{}, 1)
		cfg := p.cfg.Kernel
		cfg.Launcher, cfg.Spec = launcher, specs["python3"]
		for b.Loop() {
			b.StopTimer()
			k, err := StartKernel(context.Background(), p.zctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			out, _ := run(b, k, "import matplotlib.pyplot as plt\nplt.plot([1, 2]);")
			b.StopTimer()
			if out.ename != "" {
				b.Fatalf("plot: %+v", out)
			}
			k.Shutdown()
			b.StartTimer()
		}
	})
}

// With nothing said, the pool keeps python3 kernels ready and one of every
// other kernel the launcher forks (SageMath here), and none that would
// start cold.
func TestAutoReady(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root")
	}
	specs := installedSpecs(t)
	for _, fork := range []bool{true, false} {
		scfg := sandbox.DefaultConfig()
		scfg.Fork = fork
		launcher, err := sandbox.NewBwrap(scfg)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{"python3": 2}
		if fork {
			want["python3"] = forkedPython3Ready
			if _, ok := specs["sagemath"]; ok {
				want["sagemath"] = 1
			}
		}
		if got := AutoReady(specs, launcher.Forks); !reflect.DeepEqual(got, want) {
			t.Errorf("fork %v: AutoReady = %v, want %v (installed: %v)", fork, got, want, jupytermsg.SortedNames(specs))
		}
		launcher.Close()
	}
	// A pool told nothing keeps what AutoReady says for its launcher.
	launcher, err := sandbox.NewBwrap(sandbox.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	p, err := New(Config{Specs: specs, MaxKernels: 10, Kernel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	wanted := map[string]int{}
	for _, st := range p.Stats() {
		if st.Want > 0 {
			wanted[st.Name] = st.Want
		}
	}
	p.Close(context.Background())
	if want := AutoReady(specs, launcher.Forks); !reflect.DeepEqual(wanted, want) {
		t.Errorf("a pool with no Ready keeps %v ready, want %v", wanted, want)
	}
	if got := AutoReady(specs, nil); !reflect.DeepEqual(got, map[string]int{"python3": 2}) {
		t.Errorf("no forking launcher: AutoReady = %v", got)
	}
	if got := AutoReady(map[string]jupytermsg.Spec{}, nil); len(got) != 0 {
		t.Errorf("no kernelspecs: AutoReady = %v", got)
	}
}
