package sandbox

import (
	"bytes"
	"os"
	"strconv"
	"testing"
	"time"
)

// benchLaunchers are the two ways to start a kernel, compared side by side.
func benchLaunchers(b *testing.B) []Launcher {
	return []Launcher{None{}, newBwrap(b, nil)}
}

// BenchmarkColdStart measures starting /usr/bin/python3 -c 'import
// ipykernel' until it has exited and its sandbox is released: what a pool
// refill costs before the kernel proper starts.
func BenchmarkColdStart(b *testing.B) {
	for _, l := range benchLaunchers(b) {
		b.Run(l.Name(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				k := launchPy(b, l, "import ipykernel")
				if err := k.wait(b, time.Minute); err != nil {
					b.Fatalf("%v\n%s", err, k.out)
				}
				if err := k.p.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTrue measures starting /usr/bin/true: the sandbox's own cost
// (setup and teardown of namespaces, tmpfs, uid), without Python's.
func BenchmarkTrue(b *testing.B) {
	for _, l := range benchLaunchers(b) {
		b.Run(l.Name(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				run, work := newDirs(b)
				k := launchIn(b, l, Request{Argv: []string{"/usr/bin/true"}, RuntimeDir: run, WorkDir: work})
				if err := k.wait(b, time.Minute); err != nil {
					b.Fatalf("%v\n%s", err, k.out)
				}
				if err := k.p.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIdleMemory reports the proportional set size of an idle
// process that imported ipykernel: the kernel's own (MiB-kernel) and,
// sandboxed, that of the two bwrap processes around it (MiB-bwrap). Kernel
// memory for namespaces and page tables is not included.
func BenchmarkIdleMemory(b *testing.B) {
	for _, l := range benchLaunchers(b) {
		b.Run(l.Name(), func(b *testing.B) {
			var kernelKiB, bwrapKiB int64
			for i := 0; i < b.N; i++ {
				k := launchPy(b, l, `import ipykernel, time; print("ready", flush=True); time.sleep(600)`)
				k.waitFor(b, "ready", time.Minute)
				time.Sleep(100 * time.Millisecond)
				pids := []int{k.p.Pid()}
				if bw, ok := l.(*Bwrap); ok {
					pids = sandboxPids(b, bw, k.req.WorkDir)
				}
				for _, pid := range pids {
					comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
					if string(bytes.TrimSpace(comm)) == "bwrap" {
						bwrapKiB += pss(b, pid)
					} else {
						kernelKiB += pss(b, pid)
					}
				}
				if err := k.p.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(kernelKiB)/1024/float64(b.N), "MiB-kernel")
			b.ReportMetric(float64(bwrapKiB)/1024/float64(b.N), "MiB-bwrap")
		})
	}
}

// sandboxPids lists the host pids of the kernel whose WorkDir is workDir.
func sandboxPids(b *testing.B, bw *Bwrap, workDir string) []int {
	bw.mu.Lock()
	sl := bw.slots[workDir]
	bw.mu.Unlock()
	if sl == nil {
		b.Fatalf("no sandbox for %s", workDir)
	}
	return uidProcesses(b, sl.uid)
}

// pss reads a process's proportional set size in KiB.
func pss(b *testing.B, pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		b.Fatal(err)
	}
	_, rest, ok := bytes.Cut(data, []byte("\nPss:"))
	if !ok {
		b.Fatalf("no Pss in smaps_rollup of %d", pid)
	}
	kib, err := strconv.ParseInt(string(bytes.Fields(rest)[0]), 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return kib
}
