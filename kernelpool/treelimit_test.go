package kernelpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
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

// TestKernelHeldToCPUShareStaysAlive: a leased kernel whose four busy
// workers keep its tree over a quarter-core share is stopped and resumed
// again and again (its workers get about their share), while its
// heartbeat (every 300 ms here, three misses allowed) never fails; the
// cell ends and the kernel computes on.
func TestKernelHeldToCPUShareStaysAlive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root to switch kernels to their own uids")
	}
	specs := installedSpecs(t)
	scfg := sandbox.DefaultConfig()
	const share, busy = 0.25, 4 * time.Second
	scfg.CPUShare = share
	launcher, err := sandbox.NewBwrap(scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer launcher.Close()
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	p := newPool(t, Config{Specs: specs, Ready: map[string]int{"python3": 1}, MaxKernels: 2, Kernel: cfg})
	k := lease(t, p, "python3")
	// The workers' CPU time, read from their /proc/PID/stat (utime and
	// stime, in ticks of 1/100 s) before they are killed.
	code := fmt.Sprintf(`import subprocess, sys, time
workers = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
end = time.monotonic() + %g
while time.monotonic() < end:
    time.sleep(0.1)
ticks = 0
for w in workers:
    with open(f"/proc/{w.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks += int(fields[11]) + int(fields[12])
for w in workers:
    w.kill()
    w.wait()
print(ticks / 100)`, busy.Seconds())
	out, _ := run(t, k, code)
	cpu, err := strconv.ParseFloat(strings.TrimSpace(out.stdout), 64)
	if err != nil {
		t.Fatalf("cell: %+v (kernel: %v)", out, k.Err())
	}
	// The share over the busy time, the second's worth a kernel may run
	// ahead, and slack for the workers' start.
	if most := share*busy.Seconds() + share + 0.35; cpu > most {
		t.Errorf("four busy workers used %.2f s of CPU in %v, share %v cores (at most %.2f s)", cpu, busy, share, most)
	}
	t.Logf("four busy workers used %.2f s of CPU in %v under a share of %v cores", cpu, busy, share)
	if out, _ := run(t, k, "1+1"); out.result != "2" {
		t.Fatalf("after the workers: %+v (kernel: %v)", out, k.Err())
	}
	if err := k.Err(); err != nil {
		t.Fatalf("kernel ended: %v", err)
	}
}
