package kernelpool

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// TestSandboxedKernel runs the pool's life cycle with kernels inside the
// real bwrap sandbox.
func TestSandboxedKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root to switch kernels to their own uids")
	}
	launcher, err := sandbox.NewBwrap(sandbox.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{"python3": 1}, MaxKernels: 3, Kernel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	k := lease(t, p, "python3")
	out, _ := run(t, k, "import os; print(os.getuid()); 1+1")
	uid, _ := strconv.Atoi(strings.TrimSpace(out.stdout))
	if out.result != "2" || uid == 0 || uid == os.Getuid() {
		t.Errorf("sandboxed kernel: %+v", out)
	}
	go func() {
		time.Sleep(time.Second)
		_ = k.Interrupt()
	}()
	if out, _ := run(t, k, "while True: pass"); out.ename != "KeyboardInterrupt" {
		t.Errorf("interrupt in the sandbox: %+v", out)
	}
	restartCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := k.Restart(restartCtx); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, k, "1+1"); out.result != "2" {
		t.Errorf("after restart: %+v", out)
	}
	work := k.WorkDir
	k.Shutdown()
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work dir left behind: %v", err)
	}
}
