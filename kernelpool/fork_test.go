package kernelpool

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"

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
	p, err := New(Config{Specs: specs, Ready: map[string]int{"python3": 2}, MaxKernels: 4, Kernel: cfg})
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
// started cold with one forked from the template: launch to ready (kernel
// info answered, warm-up done). The template's own start is outside the
// loop.
func BenchmarkSandboxedStart(b *testing.B) { benchmarkSandboxedStart(b, "python3") }

// BenchmarkSandboxedStartSage is BenchmarkSandboxedStart for SageMath
// kernels: cold, and forked from a template that has imported sage.all and
// drawn a plot.
func BenchmarkSandboxedStartSage(b *testing.B) { benchmarkSandboxedStart(b, "sagemath") }

func benchmarkSandboxedStart(b *testing.B, kernel string) {
	if os.Geteuid() != 0 {
		b.Skip("the bwrap sandbox needs root")
	}
	specs := installedSpecs(b)
	if _, ok := specs[kernel]; !ok {
		b.Skipf("no %s kernelspec installed", kernel)
	}
	for _, mode := range []struct {
		name string
		fork bool
	}{{"cold", false}, {"forked", true}} {
		b.Run(mode.name, func(b *testing.B) {
			scfg := sandbox.DefaultConfig()
			scfg.Fork = mode.fork
			launcher, err := sandbox.NewBwrap(scfg)
			if err != nil {
				b.Fatal(err)
			}
			defer launcher.Close()
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
}
