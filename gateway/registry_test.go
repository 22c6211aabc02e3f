package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestClientAndServerCaps(t *testing.T) {
	capped := newTestEnv(t, 1, 2, func(c *Config) { c.MaxKernelsPerAddr = 1; c.MaxKernelsPerClient = 1 })
	capped.newKernel(url.Values{"timeout": {"60"}})
	var e apiError
	resp := capped.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || e.Message == "" {
		t.Errorf("per-address cap: %d %+v", resp.StatusCode, e)
	}

	env := newTestEnv(t, 1, 2, func(c *Config) { c.MaxKernelsPerClient = 1; c.LeaseTimeout = 300 * time.Millisecond })
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}, "client_id": {"app-1"}})
	resp = env.postForm("/kernel", url.Values{"timeout": {"60"}, "client_id": {"app-1"}}, &e)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(e.Message, "app-1") {
		t.Errorf("per-client_id cap: %d %+v", resp.StatusCode, e)
	}
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}, "client_id": {"app-2"}})
	resp = env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("server at capacity: %d %+v", resp.StatusCode, e)
	}
	resp = env.postForm("/kernel", url.Values{"kernel_name": {"cobol"}}, &e)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "python3") {
		t.Errorf("unknown kernel: %d %+v", resp.StatusCode, e)
	}
}

func TestTombstonesAreBounded(t *testing.T) {
	var ts tombstones
	now := time.Now()
	for i := range maxTombstone + 10 {
		ts.add(uuid.NewString(), tombstone{at: now.Add(time.Duration(i))})
	}
	if len(ts.byID) != maxTombstone || len(ts.order) != maxTombstone {
		t.Errorf("%d tombstones (%d ordered), want %d", len(ts.byID), len(ts.order), maxTombstone)
	}
	ts.add("late", tombstone{at: now.Add(tombstoneTTL + time.Second)})
	if len(ts.byID) != 1 {
		t.Errorf("%d tombstones after the TTL, want 1", len(ts.byID))
	}
}

// Concurrent starts from one address used to all pass the per-address
// check, which was made before the (slow) lease and counted only
// registered sessions.
func TestConcurrentStartsRespectTheAddressCap(t *testing.T) {
	env := newTestEnv(t, 2, 8, func(c *Config) { c.MaxKernelsPerAddr = 2 })
	env.waitWarm()
	codes := make(chan int, 6)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, nil)
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[http.StatusOK] != 2 || count[http.StatusTooManyRequests] != 4 {
		t.Errorf("answers %v, want 2×200 and 4×429", count)
	}
	env.gw.sessions.mu.Lock()
	live, reserved := len(env.gw.sessions.live), env.gw.sessions.perAddr["127.0.0.1"]
	env.gw.sessions.mu.Unlock()
	if live != 2 || reserved != 2 {
		t.Errorf("%d sessions, %d slots held for the address; want 2 and 2", live, reserved)
	}
}

// A session that ends at once (here: its lifespan) used to end before its
// forget hook was added, and stayed registered for good.
func TestSessionEndingAtOnceIsForgotten(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxLifespan = time.Nanosecond; c.MaxKernelsPerAddr = 1 })
	for range 3 {
		var k kernelAnswer
		resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &k)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /kernel: %d %+v (a slot of an ended session was not given back?)", resp.StatusCode, k)
		}
		env.waitEnded(k.ID)
	}
	waitFor(t, "address slots given back", func() bool {
		env.gw.sessions.mu.Lock()
		defer env.gw.sessions.mu.Unlock()
		return len(env.gw.sessions.perAddr) == 0 && len(env.gw.sessions.live) == 0
	})
}
