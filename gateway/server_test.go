package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
)

func TestDrainEndsSessionsClearly(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	pid := env.gw.sessions.get(k.ID).Kernel().Pid()
	done := make(chan error)
	go func() { done <- env.gw.Drain(t.Context()) }()
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if frames[len(frames)-1].str("reason") != session.EndShutdown {
		t.Errorf("drain reason %+v", frames[len(frames)-1])
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Error("kernel process still alive after drain")
	}
	var e apiError
	if resp := env.postForm("/kernel", url.Values{}, &e); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("new session while draining: %d", resp.StatusCode)
	}
}

// Drain gives up at its context's deadline.
func TestDrainHonoursItsContext(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.newKernel(url.Values{"timeout": {"60"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := env.gw.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("drain with a cancelled context: %v", err)
	}
}

// newPoolEnv is a gateway over a pool of the test's choosing (specs,
// sizes, queue), with the kernels of newTestEnv.
func newPoolEnv(t *testing.T, pcfg kernelpool.Config, tweak func(*Config)) *testEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real kernels: slow; make test runs it")
	}
	root, err := os.MkdirTemp("/tmp", "cgw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	m := NewRegistry()
	pcfg.Kernel = kernelpool.KernelConfig{
		Launcher: sandbox.None{}, RuntimeRoot: filepath.Join(root, "r"), WorkRoot: filepath.Join(root, "w"),
		ShutdownGrace: time.Second, Log: log,
	}
	pcfg.Metrics = m
	pool, err := kernelpool.New(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Log: log, LeaseTimeout: 60 * time.Second, Metrics: m, DetachGrace: 100 * time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	gw := New(cfg, pool)
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := gw.Drain(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
		if err := pool.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return &testEnv{t: t, pool: pool, gw: gw, http: srv}
}

// TestBurstOfSessionsWaitsForKernels: a burst of POST /kernel and
// /service larger than the pool all get a kernel, none a 503, when the
// wait fits the lease timeout.
func TestBurstOfSessionsWaitsForKernels(t *testing.T) {
	const kernels, services = 4, 2
	// One address makes the whole burst: its share is raised to fit it.
	env := newTestEnv(t, 1, 8, func(c *Config) { c.MaxKernelsPerAddr = kernels + services })
	env.waitWarm()
	var wg sync.WaitGroup
	answers := make(chan string, kernels+services)
	post := func(path string, form url.Values) {
		defer wg.Done()
		resp, err := http.PostForm(env.url(path), form)
		if err != nil {
			answers <- err.Error()
			return
		}
		defer resp.Body.Close()
		var a struct {
			ID      string `json:"id"`
			Success bool   `json:"success"`
			Stdout  string `json:"stdout"`
			Message string `json:"message"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&a)
		switch {
		case resp.StatusCode != http.StatusOK:
			answers <- fmt.Sprintf("%s: %d %s", path, resp.StatusCode, a.Message)
		case path == "/kernel" && a.ID != "":
			answers <- "ok"
			env.do(http.MethodDelete, "/kernel/"+a.ID, "", "", nil)
		case path == "/service" && a.Success && a.Stdout == "42\n":
			answers <- "ok"
		default:
			answers <- fmt.Sprintf("%s: %+v", path, a)
		}
	}
	for range kernels {
		wg.Add(1)
		go post("/kernel", url.Values{"timeout": {"60"}})
	}
	for range services {
		wg.Add(1)
		go post("/service", url.Values{"code": {"print(6*7)"}})
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if a != "ok" {
			t.Error(a)
		}
	}
	if n, _ := env.metricValue(`cellgate_lease_queue_wait_seconds_count{kernel="python3",result="served"}`); n != kernels+services {
		t.Errorf("/metrics counts %v leases served by the queue, want %d", n, kernels+services)
	}
	if _, ok := env.metricValue(`cellgate_lease_queue_length{kernel="python3"}`); !ok {
		t.Error("/metrics has no queue length")
	}
}

// TestLeaseQueueAnswers503WithRetryAfter: when the queue's expected wait
// is beyond --lease-timeout (starts take at least 3 s, the timeout is 1
// s), POST /kernel is answered 503 at once, with a Retry-After from the
// estimate, and /metrics counts the refusal.
func TestLeaseQueueAnswers503WithRetryAfter(t *testing.T) {
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	py, ok := specs["python3"]
	if !ok && !testing.Short() {
		t.Fatal("python3 kernelspec missing: run make deps")
	}
	slow := jupytermsg.Spec{Name: "slow", KernelSpec: jupytermsg.KernelSpec{
		Argv: append([]string{"/bin/sh", "-c", `sleep 3; exec "$@"`, "sh"}, py.Argv...), Language: py.Language, DisplayName: "slow"}}
	env := newPoolEnv(t, kernelpool.Config{Specs: map[string]jupytermsg.Spec{"slow": slow}, Ready: map[string]int{"slow": 1},
		MaxKernels: 4, MaxConcurrentStarts: 1, MemoryBudget: -1},
		func(c *Config) { c.DefaultKernel, c.LeaseTimeout = "slow", time.Second })
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}}) // takes the ready kernel: the refill starts
	var e apiError
	resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(e.Message, "expected wait") {
		t.Fatalf("POST /kernel behind a 3 s start with a 1 s lease timeout: %d %+v", resp.StatusCode, e)
	}
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || retry < 1 || retry > 10 {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if n, _ := env.metricValue(`cellgate_lease_refused_total{kernel="slow"}`); n != 1 {
		t.Errorf("/metrics counts %v refusals", n)
	}
	// Once the refill is ready, a request is served again.
	waitFor(t, "refill", func() bool { return env.pool.Warm() })
	env.newKernel(url.Values{"timeout": {"60"}})
}

func TestQueueKey(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.7":         "198.51.100.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2::9":      "2001:db8:1:2::/64",
		"::ffff:192.0.2.1":     "::ffff:192.0.2.1",
		"not an address":       "not an address",
	} {
		if got := queueKey(in); got != want {
			t.Errorf("queueKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRetryAfterFromTheQueueEstimate: a lease refused for its expected
// wait answers 503 with a Retry-After of that wait less the lease timeout,
// in whole seconds rounded up (at least 1); other capacity errors keep 5 s.
func TestRetryAfterFromTheQueueEstimate(t *testing.T) {
	refused := &kernelpool.WaitError{Kernel: "python3", Place: 9, Wait: 17200 * time.Millisecond, Within: 10 * time.Second, Live: 16, MaxKernels: 16}
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"expected wait 17.2 s, timeout 10 s", refusedLease(refused, refused), "8"},
		{"just over the timeout", refusedLease(refused, &kernelpool.WaitError{Wait: 10100 * time.Millisecond, Within: 10 * time.Second}), "1"},
		{"waited out the timeout", fmt.Errorf("%w: %w", errCapacity, kernelpool.ErrNoKernel), "5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			ctx := echo.New().NewContext(httptest.NewRequest(http.MethodPost, "/kernel", nil), rec)
			if err := answerError(ctx, c.err); err != nil {
				t.Fatal(err)
			}
			if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != c.want {
				t.Errorf("%d, Retry-After %q, want 503 and %q", rec.Code, rec.Header().Get("Retry-After"), c.want)
			}
		})
	}
}
