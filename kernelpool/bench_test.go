package kernelpool

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// BenchmarkLease measures handing out a kernel from a warm pool. The
// refill of each leased kernel is not timed. Run with -benchtime=Nx: every
// iteration costs a cold start outside the timer.
func BenchmarkLease(b *testing.B) {
	p := newTestPool(b, map[string]int{"python3": 1}, 3)
	for b.Loop() {
		b.StopTimer()
		for !p.Warm() {
			time.Sleep(5 * time.Millisecond)
		}
		b.StartTimer()
		k, err := p.Lease(context.Background(), LeaseRequest{Kernel: "python3"})
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		go k.Shutdown()
		b.StartTimer()
	}
}

// BenchmarkExecuteZMQ is the direct-ZMQ floor of an execute round trip:
// execute_request of 1+1 until its reply and the idle status.
func BenchmarkExecuteZMQ(b *testing.B) {
	p := newTestPool(b, map[string]int{"python3": 1}, 2)
	k := lease(b, p, "python3")
	defer k.Shutdown()
	ctx := context.Background()
	for b.Loop() {
		if _, err := Execute(ctx, k, "1+1", nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkColdStart measures a kernel from launch to ready, per spec.
func BenchmarkColdStart(b *testing.B) {
	specs := installedSpecs(b)
	for _, name := range []string{"python3", "sagemath"} {
		spec, ok := specs[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			p := newTestPool(b, map[string]int{}, 1)
			cfg := p.cfg.Kernel
			cfg.Spec = spec
			for b.Loop() {
				k, err := StartKernel(context.Background(), p.zctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				k.Shutdown()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkExecuteFloor measures the execute floor of one sandboxed,
// forked python3 kernel (as cellgate deploys it) from two clients in
// turn, each its own round trip of 1+1 until the reply and the idle
// status: kernelpool.Execute (what cellgate's relay builds on) and
// jupyter_client, the fastest independent client, on the kernel's own
// sockets. Reported: each one's median and their ratio.
func BenchmarkExecuteFloor(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("the bwrap sandbox needs root")
	}
	launcher, err := sandbox.NewBwrap(sandbox.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer launcher.Close()
	p := newTestPool(b, map[string]int{}, 1)
	cfg := p.cfg.Kernel
	cfg.Launcher, cfg.Spec = launcher, installedSpecs(b)["python3"]
	k, err := StartKernel(context.Background(), p.zctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer k.Shutdown()

	// jupyter_client on this kernel's sockets, and on an ipykernel it
	// launched itself, as Jupyter Server would.
	onOurs := startFloorClient(b, filepath.Join(k.runtimeDir, "kernel.json"))
	onItsOwn := startFloorClient(b, "launch")
	ctx := context.Background()
	// Every client's first execution is out of the figures.
	if _, err := Execute(ctx, k, "1+1", nil); err != nil {
		b.Fatal(err)
	}
	onOurs.roundTrip(b)
	onItsOwn.roundTrip(b)
	var ours, theirs, theirKernel []float64
	for b.Loop() {
		began := time.Now()
		if _, err := Execute(ctx, k, "1+1", nil); err != nil {
			b.Fatal(err)
		}
		ours = append(ours, float64(time.Since(began))/float64(time.Millisecond))
		theirs = append(theirs, onOurs.roundTrip(b))
		theirKernel = append(theirKernel, onItsOwn.roundTrip(b))
	}
	b.ReportMetric(median(ours), "kernelpool_p50_ms")
	b.ReportMetric(median(theirs), "jupyter_client_p50_ms")
	b.ReportMetric(median(ours)/median(theirs), "ratio")
	b.ReportMetric(median(theirKernel), "jupyter_client_own_kernel_p50_ms")
}

// floorClient is testdata/jupyter_client_floor.py, running.
type floorClient struct {
	stdin io.WriteCloser
	lines *bufio.Scanner
}

func startFloorClient(b *testing.B, connection string) *floorClient {
	client := exec.Command("/usr/bin/python3", "testdata/jupyter_client_floor.py", connection)
	client.Stderr = os.Stderr
	stdin, err := client.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := client.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := client.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = client.Wait()
	})
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "ready" {
		b.Fatalf("jupyter_client (%s) did not connect: %q %v", connection, lines.Text(), lines.Err())
	}
	return &floorClient{stdin: stdin, lines: lines}
}

// roundTrip has the client time one execution, in milliseconds.
func (c *floorClient) roundTrip(b *testing.B) float64 {
	if _, err := fmt.Fprintln(c.stdin); err != nil {
		b.Fatal(err)
	}
	if !c.lines.Scan() {
		b.Fatalf("jupyter_client: %v", c.lines.Err())
	}
	ms, err := strconv.ParseFloat(c.lines.Text(), 64)
	if err != nil {
		b.Fatal(err)
	}
	return ms
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
