package kernelpool

import (
	"fmt"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// concurrentStartsCompared are the MaxConcurrentStarts values
// BenchmarkSupplyConcurrentStarts puts side by side; the default is among
// them.
var concurrentStartsCompared = [...]int{1, 2, 3, 4}

// BenchmarkSupplyConcurrentStarts is BenchmarkSupply's round for forked
// kernels under each MaxConcurrentStarts in concurrentStartsCompared, the
// values taking turns round by round on one template, so that the
// machine's noise falls on all of them alike: how many starts at once
// give the most kernels per second on this machine (a forked start is
// partly waiting — the template's answer, the kernel's sockets — so the
// best value need not be the number of cores).
func BenchmarkSupplyConcurrentStarts(b *testing.B) {
	specs := installedSpecs(b)
	runStartModes(b, []startMode{{"forked", true, true}}, func(b *testing.B, _ startMode, launcher *sandbox.Bwrap) {
		kcfg := testKernelConfig(b)
		kcfg.Launcher = launcher
		warmTemplate(b, kcfg, specs["python3"])
		var took [len(concurrentStartsCompared)]time.Duration
		var tallies [len(concurrentStartsCompared)]startTally
		for b.Loop() {
			for i, starts := range concurrentStartsCompared {
				t, _ := supplyRound(b, Config{Specs: specs, MaxKernels: supplyBurst, MaxConcurrentStarts: starts, Kernel: kcfg}, &tallies[i])
				took[i] += t
			}
		}
		for i, starts := range concurrentStartsCompared {
			b.ReportMetric(float64(supplyBurst*b.N)/took[i].Seconds(), fmt.Sprintf("kernels/s-%d-at-once", starts))
			if ms, ok := tallies[i].meanMS(); ok {
				b.ReportMetric(ms, fmt.Sprintf("ms-per-start-%d-at-once", starts))
			}
			if ms, ok := tallies[i].busyPerKernelMS(); ok {
				b.ReportMetric(ms, fmt.Sprintf("cpu-ms-per-kernel-%d-at-once", starts))
			}
		}
	})
}
