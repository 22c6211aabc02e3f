package kernelpool

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// BenchmarkWarmup puts the pool's warm-up side by side with none, for
// sandboxed python3 kernels started cold and forked, taking turns kernel
// by kernel on one launcher: launch to ready (ready-ms), the first cell
// after it (1+1 to its reply and idle: first-cell-ms), and the two
// together, which is what a reader who waits for a fresh kernel waits.
// Medians. The warm-up pays off when the first cell saves more than the
// start spends, or when kernels start ahead of their readers (the pool)
// and only the first cell is waited for.
func BenchmarkWarmup(b *testing.B) {
	specs := installedSpecs(b)
	runStartModes(b, coldAndForked(), func(b *testing.B, _ startMode, launcher *sandbox.Bwrap) {
		p := newTestPool(b, map[string]int{}, 1)
		ways := []struct {
			name   string
			warmup func(jupytermsg.Spec) []string
		}{{"warmup", DefaultWarmup}, {"none", func(jupytermsg.Spec) []string { return nil }}}
		ready := make([][]float64, len(ways))
		first := make([][]float64, len(ways))
		both := make([][]float64, len(ways))
		start := func(i int) {
			cfg := p.cfg.Kernel
			cfg.Launcher, cfg.Spec, cfg.Warmup = launcher, specs["python3"], ways[i].warmup
			began := time.Now()
			k, err := StartKernel(context.Background(), p.zctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			readyAt := time.Now()
			out, _ := run(b, k, "1+1")
			done := time.Now()
			k.Shutdown()
			if out.result != "2" {
				b.Fatalf("%s: 1+1 gave %+v", ways[i].name, out)
			}
			ready[i] = append(ready[i], ms(readyAt.Sub(began)))
			first[i] = append(first[i], ms(done.Sub(readyAt)))
			both[i] = append(both[i], ms(done.Sub(began)))
		}
		start(0) // a forking launcher's template starts here
		ready[0], first[0], both[0] = nil, nil, nil
		for b.Loop() {
			for i := range ways {
				start(i)
			}
		}
		for i, w := range ways {
			b.ReportMetric(median(ready[i]), fmt.Sprintf("ready-ms-%s", w.name))
			b.ReportMetric(median(first[i]), fmt.Sprintf("first-cell-ms-%s", w.name))
			b.ReportMetric(median(both[i]), fmt.Sprintf("ready+first-ms-%s", w.name))
		}
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
