package kernelpool

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// TestKernelEndsAtTreeMemoryLimit: a leased, forked kernel whose four
// workers together hold more than the sandbox's memory limit (each under
// it) dies, and its death names the limit: what the gateway tells the
// client as the reason.
func TestKernelEndsAtTreeMemoryLimit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root to switch kernels to their own uids")
	}
	specs := installedSpecs(t)
	scfg := sandbox.DefaultConfig()
	scfg.Memory = 1 << 30
	launcher, err := sandbox.NewBwrap(scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	p := newPool(t, Config{Specs: specs, Ready: map[string]int{"python3": 1}, MaxKernels: 2, Kernel: cfg})
	k := lease(t, p, "python3")
	// Fresh interpreters, so that each worker's address space is small
	// whatever the kernel's: 4 x 300 MiB, held.
	const code = `import subprocess, sys
workers = [subprocess.Popen([sys.executable, "-c", "import time\nheld = []\nfor _ in range(30):\n    held.append(b'\\x01' * (10 << 20))\n    time.sleep(0.02)\ntime.sleep(600)"]) for _ in range(4)]
for w in workers:
    w.wait()
`
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := Execute(ctx, k, code, func(Received) {}); err == nil {
		t.Fatal("the workers' cell finished")
	}
	select {
	case <-k.Done():
	case <-ctx.Done():
		t.Fatal("the kernel still runs")
	}
	err = k.Err()
	if !errors.Is(err, sandbox.ErrMemoryLimit) || !errors.Is(err, ErrKernelDied) || !strings.Contains(err.Error(), "MiB together") {
		t.Fatalf("kernel ended with %v, want its death at the memory limit", err)
	}
	t.Log(err)
}
