package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// floodCode displays n messages of size bytes each.
func floodCode(n, size int) string {
	return fmt.Sprintf("for i in range(%d):\n    display({'text/plain': str(i) + 'x' * %d}, raw=True)", n, size)
}

// startFlooders starts n sessions whose kernels flood and whose websocket
// clients do not read, and returns the sessions and their clients.
func startFlooders(t testing.TB, env *testEnv, n, messages, size int) ([]*session.Session, []*wsClient, []string) {
	t.Helper()
	var sessions []*session.Session
	var clients []*wsClient
	var ids []string
	for range n {
		k := env.newKernel(url.Values{"timeout": {"300"}})
		c := env.dialSage(k.ID, "")
		ids = append(ids, c.execute(floodCode(messages, size)))
		sessions = append(sessions, env.gw.sessions.get(k.ID))
		clients = append(clients, c)
	}
	return sessions, clients, ids
}

// floodsOver reports whether every flood is over: its execute_reply is in
// its session's replay, or its kernel is idle again after at least
// messages entries (the budget may drop output, and may let the reply go
// from the replay for room).
func floodsOver(sessions []*session.Session, clients []*wsClient, ids []string, messages int) bool {
	for i, s := range sessions {
		if state, _, _ := s.Snapshot(); state == jupytermsg.StateIdle && s.Replay().Last() >= uint64(messages) {
			continue
		}
		msgs, _, _, _ := s.Replay().Since(0, clients[i].session, 0)
		replied := false
		for _, e := range msgs {
			if e.Msg.Header.MsgType == "execute_reply" && e.Msg.ParentMsgID() == ids[i] {
				replied = true
			}
		}
		if !replied {
			return false
		}
	}
	return true
}

// Kernels flooding clients that do not read cannot make the process hold
// more than the kernel message budget (bytes charged, not RSS), another
// session works meanwhile, /metrics shows the budget, and nothing is left
// charged once the sessions end.
func TestKernelMessageBudgetBoundsFloodingKernels(t *testing.T) {
	const budgetBytes = 8 << 20
	budget := kernelpool.NewMessageBudget(budgetBytes)
	env := newTestEnvWith(t, 3, 4, nil, func(k *kernelpool.KernelConfig) {
		k.MaxMessageBytes, k.MessageBudget = 2<<20, budget
	})
	env.gw.metrics.registry.MustRegister(budget)
	env.waitWarm()
	const messages = 40
	flooders, floodClients, floodIDs := startFlooders(t, env, 2, messages, 1500000)

	k := env.newKernel(url.Values{"timeout": {"300"}})
	c := env.dialSage(k.ID, "")
	for i := range 5 {
		frames := c.until(idleAfter(c.execute(fmt.Sprintf("print('still here', %d)", i))))
		if text := streamText(frames); !strings.Contains(text, fmt.Sprintf("still here %d", i)) {
			t.Fatalf("the working session's output %d during the flood: %q", i, text)
		}
	}
	waitFor(t, "the floods to end", func() bool { return floodsOver(flooders, floodClients, floodIDs, messages) })

	st := budget.Stats()
	t.Logf("after 2 x %d messages of 1.5 MiB to clients that do not read: %+v", messages, st)
	if st.Peak > budgetBytes || st.DoubleReleases != 0 {
		t.Fatalf("peak %d bytes charged, budget %d; %d charges released twice", st.Peak, budgetBytes, st.DoubleReleases)
	}
	if st.Reclaims == 0 && st.Dropped == 0 {
		t.Fatal("the budget never had to act: the test does not exercise it (2 replays of 16 MiB would hold more than it)")
	}
	if peak, ok := env.metricValue(`cellgate_kernel_message_bytes{state="peak"}`); !ok || peak != float64(st.Peak) {
		t.Errorf("/metrics peak %v (present %v), want %d", peak, ok, st.Peak)
	}
	if limit, ok := env.metricValue(`cellgate_kernel_message_bytes{state="limit"}`); !ok || limit != budgetBytes {
		t.Errorf("/metrics limit %v (present %v), want %d", limit, ok, budgetBytes)
	}

	for _, id := range append([]string{k.ID}, flooders[0].ID(), flooders[1].ID()) {
		if resp := env.do(http.MethodDelete, "/kernel/"+id, "", "", nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete %s: %d", id, resp.StatusCode)
		}
	}
	for _, s := range append(flooders, env.gw.sessions.get(k.ID)) {
		if s != nil {
			<-s.Stopped()
		}
	}
	waitFor(t, "every charge given back", func() bool { return budget.Stats().InUse == 0 })
	if st := budget.Stats(); st.DoubleReleases != 0 {
		t.Fatalf("%d charges released twice", st.DoubleReleases)
	}
}

// A message over the per-message cap in all its frames together (each
// under libzmq's per-frame cap) is refused, counted, and its client told.
func TestKernelMessageOverTheCapIsRefusedAndTold(t *testing.T) {
	budget := kernelpool.NewMessageBudget(16 << 20)
	env := newTestEnvWith(t, 1, 2, nil, func(k *kernelpool.KernelConfig) {
		k.MaxMessageBytes, k.MessageBudget = 2<<20, budget
	})
	k := env.newKernel(url.Values{"timeout": {"300"}})
	c := env.dialSage(k.ID, "")
	// Three frames of 1 MiB: each under the 2 MiB cap, together over it.
	frames := c.until(idleAfter(c.execute("from ipykernel.comm import Comm\nComm(target_name='cellgate-test').send(data={}, buffers=[b'x' * (1 << 20)] * 3)\nprint('sent')")))
	text := streamText(frames)
	if !strings.Contains(text, "sent") || !strings.Contains(text, "1 messages from the kernel were dropped: each was over the server's per-message limit") {
		t.Errorf("a message over the cap in its frames together: the client saw %q", text)
	}
	if st := budget.Stats(); st.Refused != 1 || st.Peak > 2<<20 {
		t.Errorf("%+v: want 1 refused as oversized and nothing of it charged", st)
	}
}

// BenchmarkKernelMessageHeap measures what the issue reported (15 MiB
// iopub messages from 6 kernels to clients that do not read: 607 MB peak):
// the peak Go heap (HeapInuse, sampled every 20 ms), the peak RSS (VmHWM,
// reset before each setting), what stays after (live heap, and RSS once
// the freed heap is returned) with the sessions still open, and the peak
// bytes charged, with no budget and with one, in one run. Run it alone,
// once:
//
//	go test ./gateway -run XXX -bench KernelMessageHeap -benchtime 1x
func BenchmarkKernelMessageHeap(b *testing.B) {
	const (
		kernels  = 6
		messages = 8
		size     = 15 << 20
	)
	for _, budgetMB := range []int64{0, 64, 16} {
		name := "budget=off"
		if budgetMB > 0 {
			name = fmt.Sprintf("budget=%dMiB", budgetMB)
		}
		b.Run(name, func(b *testing.B) {
			budget := kernelpool.NewMessageBudget(budgetMB << 20)
			env := newTestEnvWith(b, kernels, kernels+1, func(c *Config) { c.MaxKernelsPerAddr = kernels + 1 }, func(k *kernelpool.KernelConfig) {
				k.MaxMessageBytes, k.MessageBudget = 16<<20, budget
			})
			for range b.N {
				b.StopTimer()
				env.waitWarm()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				base := ms.HeapInuse
				debug.FreeOSMemory()
				baseRSS := procStatusBytes("VmRSS")
				// Writing 5 resets the process's peak RSS (VmHWM) to its RSS.
				_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
				budget.ResetPeak()
				b.StartTimer()
				var peak uint64
				stop := make(chan struct{})
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					tick := time.NewTicker(20 * time.Millisecond)
					defer tick.Stop()
					for {
						var ms runtime.MemStats
						runtime.ReadMemStats(&ms)
						peak = max(peak, ms.HeapInuse)
						select {
						case <-stop:
							return
						case <-tick.C:
						}
					}
				}()
				sessions, clients, ids := startFlooders(b, env, kernels, messages, size)
				// Over once each kernel is idle after busy, the input, the
				// reply and the idle (its output may all be dropped).
				for deadline := time.Now().Add(5 * time.Minute); !floodsOver(sessions, clients, ids, 4); time.Sleep(50 * time.Millisecond) {
					if time.Now().After(deadline) {
						for i, s := range sessions {
							state, _, _ := s.Snapshot()
							msgs, missed, _, _ := s.Replay().Since(0, clients[i].session, 0)
							var types []string
							for _, e := range msgs {
								types = append(types, fmt.Sprintf("%s/%s(%d)", e.Channel, e.Msg.Header.MsgType, len(e.Msg.Content)))
							}
							b.Logf("session %d: state %s, last %d, missed %d: %v", i, state, s.Replay().Last(), missed, types)
						}
						b.Fatalf("the floods never ended: %+v", budget.Stats())
					}
				}
				close(stop)
				wg.Wait()
				b.StopTimer()
				peakRSS := procStatusBytes("VmHWM")
				runtime.GC()
				runtime.ReadMemStats(&ms)
				debug.FreeOSMemory()
				b.ReportMetric(float64(baseRSS)/(1<<20), "base-rss-MiB")
				b.ReportMetric(float64(peakRSS)/(1<<20), "peak-rss-MiB")
				b.ReportMetric(float64(procStatusBytes("VmRSS"))/(1<<20), "after-rss-MiB")
				st := budget.Stats()
				b.ReportMetric(float64(base)/(1<<20), "base-heap-MiB")
				b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
				b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "live-heap-MiB")
				b.ReportMetric(float64(st.Peak)/(1<<20), "peak-charged-MiB")
				b.ReportMetric(float64(st.Dropped), "dropped")
				for _, s := range sessions {
					s.End(session.EndDeleted)
					<-s.Stopped()
				}
				b.StartTimer()
			}
		})
	}
}

// procStatusBytes is a "kB" line of /proc/self/status, in bytes (0 if
// absent).
func procStatusBytes(name string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
