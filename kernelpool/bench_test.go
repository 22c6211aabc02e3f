package kernelpool

import (
	"context"
	"testing"
	"time"
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
