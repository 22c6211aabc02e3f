package kernelpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// hangGuard is how long a test waits for something that must happen
// before calling it a hang. It is not a speed requirement.
const hangGuard = 2 * time.Minute

func testContext(t testing.TB) *zmq.Context {
	t.Helper()
	zctx, err := NewZMQContext(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = zctx.Term() })
	return zctx
}

// startKernel starts one kernel of spec outside any pool; it is shut down
// when the test ends.
func startKernel(t *testing.T, spec jupytermsg.Spec, change func(*KernelConfig)) *Kernel {
	t.Helper()
	zctx := testContext(t)
	cfg := testKernelConfig(t)
	cfg.Spec = spec
	if change != nil {
		change(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	k, err := StartKernel(ctx, zctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Shutdown)
	return k
}

// misbehavingSpec runs testdata/misbehaving_kernel.py in mode.
func misbehavingSpec(t *testing.T, mode string) jupytermsg.Spec {
	t.Helper()
	script, err := filepath.Abs("testdata/misbehaving_kernel.py")
	if err != nil {
		t.Fatal(err)
	}
	python := installedSpecs(t)["python3"].Argv[0]
	return jupytermsg.Spec{Name: "misbehaving-" + mode, KernelSpec: jupytermsg.KernelSpec{
		Argv: []string{python, script, mode, "-f", "{connection_file}"}, Language: "python",
	}}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatalf("hung waiting for %s", what)
	}
}

func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

func assertKernelGone(t *testing.T, k *Kernel, pgid int) {
	t.Helper()
	if !groupGone(pgid) {
		t.Errorf("process group %d still exists", pgid)
	}
	for _, d := range []string{k.runtimeDir, k.WorkDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}
}

func assertEmpty(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if left, _ := os.ReadDir(d); len(left) != 0 {
			t.Errorf("%s holds %d leftover entries", d, len(left))
		}
	}
}

// installedSpecs returns the installed kernelspecs. Every test that asks
// for them starts real kernels, so go test -short (make check) skips them
// here, in one place.
func installedSpecs(t testing.TB) map[string]jupytermsg.Spec {
	t.Helper()
	if testing.Short() {
		t.Skip("kernelpool: slow (real kernels); run make test")
	}
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	if _, ok := specs["python3"]; !ok {
		t.Fatal("no python3 kernelspec installed: run make deps")
	}
	return specs
}

// shortTempDir keeps ipc socket paths under the 107-byte limit.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "cgk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testKernelConfig(t testing.TB) KernelConfig {
	root := shortTempDir(t)
	return KernelConfig{
		Launcher:          sandbox.None{},
		RuntimeRoot:       filepath.Join(root, "run"),
		WorkRoot:          filepath.Join(root, "work"),
		HeartbeatInterval: 300 * time.Millisecond,
		ShutdownGrace:     time.Second,
		Log:               zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
}

func newTestPool(t testing.TB, ready map[string]int, max int) *Pool {
	t.Helper()
	p, err := New(Config{Specs: installedSpecs(t), Ready: ready, MaxKernels: max, Kernel: testKernelConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return p
}

func lease(t testing.TB, p *Pool, name string) *Kernel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	k, err := p.Lease(ctx, LeaseRequest{Kernel: name})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type outputs struct {
	stdout, result, ename string
}

func run(t testing.TB, k *Kernel, code string) (outputs, *jupytermsg.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out outputs
	reply, err := Execute(ctx, k, code, func(r Received) {
		switch r.Msg.Header.MsgType {
		case "stream":
			var s jupytermsg.Stream
			_ = r.Msg.DecodeContent(&s)
			out.stdout += s.Text
		case "execute_result":
			var d jupytermsg.DisplayData
			_ = r.Msg.DecodeContent(&d)
			out.result = strings.Trim(string(d.Data["text/plain"]), `"`)
		case "error":
			var e jupytermsg.Error
			_ = r.Msg.DecodeContent(&e)
			out.ename = e.EName
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, reply
}

func processExists(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// interruptAndRestart checks that k (described by what) stops a busy loop
// on Interrupt and computes again after Restart.
func interruptAndRestart(t *testing.T, k *Kernel, what string) {
	t.Helper()
	go func() {
		time.Sleep(time.Second)
		_ = k.Interrupt()
	}()
	if out, _ := run(t, k, "while True: pass"); out.ename != "KeyboardInterrupt" {
		t.Errorf("interrupt in %s: %+v", what, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, k, "1+1"); out.result != "2" {
		t.Errorf("after restart of %s: %+v", what, out)
	}
}

// leaseBurst leases n python3 kernels at once, each for its own client,
// and ends each as soon as it has it.
func leaseBurst(t *testing.T, p *Pool, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			k, err := p.Lease(ctx, LeaseRequest{Kernel: "python3", Client: fmt.Sprint(i)})
			if err != nil {
				t.Error(err)
				return
			}
			k.Shutdown()
		}()
	}
	wg.Wait()
}
