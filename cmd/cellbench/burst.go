package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

const secBurst = "Bursts of concurrent requests on the default pool: fair queue + elastic pool vs the old single line (same run)"

// oldBehaviour are the flags that give cellgate's kernel supply before
// issue 10: one first-come-first-served line in which each request waits
// out --lease-timeout, and a pool that never grows beyond --pool.
var oldBehaviour = []string{"--lease-queue", "fifo", "--pool-memory-mb", "0"}

// burstServer is one cellgate the bursts run against.
type burstServer struct {
	key, label string
	api        *api
}

// phaseBurst sends bursts of 20 and 50 concurrent POST /kernel and POST
// /service, each from its own reader address, to this cellgate (fair
// queue, elastic pool) and to a second one started with the old
// behaviour, one burst at a time, each on a settled pool: first with the
// pool at its floor (--pool), then for this cellgate once more within the
// minute, when its pool has grown from the first burst.
func (e *env) phaseBurst(ctx context.Context) error {
	oldGW, oldAPI, shown, err := e.startCellgate("cellgate-old", oldBehaviour)
	if err != nil {
		return fmt.Errorf("second cellgate (old behaviour): %w", err)
	}
	defer e.stopServer(oldGW)
	fmt.Fprintf(os.Stderr, "cellbench: old behaviour: %s\n", shown)
	fair := burstServer{"fair", "fair queue + elastic pool", e.api}
	old := burstServer{"fifo", "old: one line, fixed pool", oldAPI}
	var sizes []int
	for _, f := range strings.Split(e.opts.burstSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("-bursts: bad size %q", f)
		}
		sizes = append(sizes, n)
	}
	group := 40
	for _, kind := range []string{"kernel", "service"} {
		for _, n := range sizes {
			// Both pools at their floor, nothing starting.
			for _, s := range []burstServer{fair, old} {
				if err := s.api.waitPoolSettled(ctx, true, 3*time.Minute); err != nil {
					return fmt.Errorf("%s: %w", s.label, err)
				}
			}
			for _, run := range []struct {
				s      burstServer
				second bool
			}{{fair, false}, {fair, true}, {old, false}} {
				if run.second {
					// Grown by the burst just sent; the demand window
					// is a minute.
					if err := run.s.api.waitPoolSettled(ctx, false, 2*time.Minute); err != nil {
						return fmt.Errorf("%s: %w", run.s.label, err)
					}
				}
				for _, s := range []burstServer{fair, old} {
					if s != run.s {
						if err := s.api.waitPoolSettled(ctx, false, 2*time.Minute); err != nil {
							return fmt.Errorf("%s: %w", s.label, err)
						}
					}
				}
				ready, _ := run.s.api.metric(`cellgate_pool_kernels{kernel="python3",state="ready"}`)
				group++
				r := e.burst(ctx, run.s.api, kind, n, group)
				e.burstRow(kind, n, run.s, run.second, int(ready), r)
			}
		}
	}
	return nil
}

// burstResult is one burst's answers.
type burstResult struct {
	all, failed []float64 // ms from the burst's start to each answer
	total       time.Duration
	sample      string
}

// burst sends n concurrent requests of kind and waits for every answer.
// Kernels from POST /kernel are held until the last answer, then deleted.
func (e *env) burst(ctx context.Context, a *api, kind string, n, group int) burstResult {
	var (
		mu  sync.Mutex
		r   burstResult
		ids []string
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := reader(group, i)
			var err error
			switch kind {
			case "kernel":
				var k kernelAnswer
				k, _, err = a.newKernel(ctx, url.Values{"timeout": {"120"}}, from)
				if err == nil {
					mu.Lock()
					ids = append(ids, k.ID)
					mu.Unlock()
				}
			case "service":
				err = a.postService(ctx, from)
			}
			took := ms(time.Since(start))
			mu.Lock()
			defer mu.Unlock()
			r.all = append(r.all, took)
			if err != nil {
				r.failed = append(r.failed, took)
				if r.sample == "" {
					r.sample = err.Error()
				}
			}
		}()
	}
	wg.Wait()
	r.total = time.Since(start)
	for _, id := range ids {
		if err := a.deleteKernel(id); err != nil {
			e.rec.problem("burst: %v", err)
		}
	}
	return r
}

func (e *env) burstRow(kind string, n int, s burstServer, second bool, ready int, r burstResult) {
	what := map[string]string{"kernel": "POST /kernel", "service": "POST /service"}[kind]
	when := "pool at its floor"
	id := fmt.Sprintf("burst_%s_%d_%s", kind, n, s.key)
	if second {
		when = "again within the minute"
		id += "_again"
	}
	st := summarize(r.all)
	v := map[string]float64{"value": round(ms(r.total)), "errors": float64(len(r.failed)),
		"p50_ms": round(st.p50), "p99_ms": round(st.p99), "ready_at_start": float64(ready)}
	if len(r.failed) > 0 {
		v["errors_p50_ms"] = round(summarize(r.failed).p50)
	}
	note := ""
	if r.sample != "" {
		note = "e.g. " + shortError(r.sample)
	}
	target := ""
	if !second && s.key == "fair" {
		target = "0 errors (issue 10)"
	}
	e.rec.rows = append(e.rec.rows, Row{ID: id, Section: secBurst,
		Label: fmt.Sprintf("%d concurrent %s, %s (%s): all answered after", n, what, s.label, when), Unit: "ms",
		Values: v, Target: target, Source: "cellbench", Note: note})
}

// shortError keeps the gist of an error answer for a note.
func shortError(s string) string {
	if i := strings.Index(s, "expected wait"); i >= 0 {
		return "503 " + strings.SplitN(s[i:], ";", 2)[0]
	}
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// waitPoolSettled waits until the python3 pool starts nothing, leases
// nothing and holds its target of ready kernels; atFloor also wants that
// target back at --pool (the demand window passed).
func (a *api) waitPoolSettled(ctx context.Context, atFloor bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	state := func(s string) float64 {
		v, err := a.metric(`cellgate_pool_kernels{kernel="python3",state="` + s + `"}`)
		if err != nil {
			return -1
		}
		return v
	}
	for {
		ready, target, want := state("ready"), state("target"), state("wanted")
		starting, leased, waiting := state("starting"), state("leased"), state("waiting")
		if starting == 0 && leased == 0 && waiting == 0 && ready == target && (!atFloor || target == want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pool not settled after %s: ready %v, target %v, floor %v, starting %v, leased %v, waiting %v",
				timeout, ready, target, want, starting, leased, waiting)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), fmt.Errorf("waiting for the pool to settle"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// poolHeld is how many kernels the pool holds unleased now (ready and
// starting, every kernelspec): with the elastic pool that can be more
// than --pool for a minute after a run of requests.
func (a *api) poolHeld() (int, error) {
	resp, err := a.http.Get(a.base + "metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	n := 0.0
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "cellgate_pool_kernels{") ||
			!(strings.Contains(line, `state="ready"`) || strings.Contains(line, `state="starting"`)) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q: %w", line, err)
		}
		n += v
	}
	return int(n), nil
}
