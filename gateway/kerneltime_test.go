package gateway

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/kernelpool"
)

func TestFairShare(t *testing.T) {
	for total, want := range map[int]int{1: 1, 3: 1, 4: 1, 8: 2, 16: 4, 40: 10} {
		if got := FairShare(total); got != want {
			t.Errorf("FairShare(%d) = %d, want %d", total, got, want)
		}
	}
	if got, total := DefaultConfig().MaxKernelsPerAddr, kernelpool.DefaultConfig().MaxKernels; got != FairShare(total) || got >= total {
		t.Errorf("default per-address cap %d of %d kernels: leaves no room for others", got, total)
	}
}

// With the default caps, one address holding all it may leaves kernels
// for another address (it used to take all 16).
func TestPerAddressDefaultLeavesRoomForOthers(t *testing.T) {
	env := newTestEnv(t, 1, kernelpool.DefaultConfig().MaxKernels, nil)
	share := FairShare(kernelpool.DefaultConfig().MaxKernels)
	for range share {
		env.newKernel(url.Values{"timeout": {"60"}})
	}
	var e apiError
	if r := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e); r.StatusCode != http.StatusTooManyRequests || !strings.Contains(e.Message, "kernels for address") {
		t.Errorf("kernel %d from one address: %d %+v, want 429", share+1, r.StatusCode, e)
	}
	resp, err := clientFrom(secondAddr).PostForm(env.url("/kernel"), url.Values{"timeout": {"60"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST /kernel from %s while %s holds its share: %d", secondAddr, firstAddr, resp.StatusCode)
	}
}

// An address that holds a kernel long enough uses up its kernel time: its
// next session is refused with 429 and Retry-After, even once it holds
// none (the budget is over time, not at one moment), while another
// address is served.
func TestKernelTimeRefusesALongHolder(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.KernelTimePerAddr, c.KernelTimeWindow = 2*time.Second, time.Hour })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	waitFor(t, "the held kernel using up the address's kernel time", func() bool { return env.gw.sessions.kernelTimeLeft(firstAddr.String()) <= 0 })

	var e apiError
	r := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	retry, _ := strconv.Atoi(r.Header.Get("Retry-After"))
	if r.StatusCode != http.StatusTooManyRequests || retry < 1 || !strings.Contains(e.Message, "kernel time") || !strings.Contains(e.Message, "end some of the 1 kernels") {
		t.Errorf("new kernel while holding one past the budget: %d Retry-After %q %+v", r.StatusCode, r.Header.Get("Retry-After"), e)
	}
	if resp := env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d", resp.StatusCode)
	}
	env.waitEnded(k.ID)
	r = env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	retry, _ = strconv.Atoi(r.Header.Get("Retry-After"))
	if r.StatusCode != http.StatusTooManyRequests || retry < 1 || !strings.Contains(e.Message, "retry in") {
		t.Errorf("new kernel holding none, budget used: %d Retry-After %q %+v", r.StatusCode, r.Header.Get("Retry-After"), e)
	}
	resp, err := clientFrom(secondAddr).PostForm(env.url("/service"), url.Values{"code": {"print(6*7)"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/service from %s meanwhile: %d", secondAddr, resp.StatusCode)
	}
}

// The kernel-time arithmetic, on a clock the test moves.
func TestKernelTimeBucket(t *testing.T) {
	// 100 kernel-seconds per 1000 s: refills 0.1 kernel-second a second.
	budget := kernelTime{perAddr: 100 * time.Second, window: 1000 * time.Second}
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "errors"}, []string{"kind"})
	r := newRegistry(10, 10, budget, errs)
	clock := time.Unix(1e9, 0)
	r.now = func() time.Time { return clock }
	advance := func(d time.Duration) { clock = clock.Add(d) }
	refused := func(remote string) *kernelTimeError {
		t.Helper()
		_, err := r.reserve(remote, "")
		var kt *kernelTimeError
		if !errors.As(err, &kt) || statusOf(err, 0) != http.StatusTooManyRequests {
			t.Fatalf("reserve for %s: %v, want refused for kernel time", remote, err)
		}
		return kt
	}
	reserve := func(remote string) func() {
		t.Helper()
		release, err := r.reserve(remote, "")
		if err != nil {
			t.Fatalf("reserve for %s: %v", remote, err)
		}
		return release
	}

	a1, a2 := reserve("a"), reserve("a")
	advance(60 * time.Second) // 100 + 60×(0.1−2) = −14
	if kt := refused("a"); kt.retryAfter != 150*time.Second || !kt.ending || kt.held != 2 {
		t.Errorf("holding 2, 14 kernel-seconds over: %+v, want 150 s after ending some", kt)
	}
	reserve("b")() // another address is not affected
	a1()
	a2()
	advance(100 * time.Second) // −14 + 10 = −4
	if kt := refused("a"); kt.retryAfter != 50*time.Second || kt.ending {
		t.Errorf("holding none, 4 kernel-seconds over: %+v, want 50 s", kt)
	}
	if got := r.kernelTimeLeft("a"); got != -4*time.Second {
		t.Errorf("left %v, want -4s", got)
	}
	advance(50 * time.Second) // +1
	reserve("a")()

	// However long an address overdraws, it is forgiven beyond one
	// budget: once its sessions end, it waits at most about one window.
	release := reserve("c")
	advance(100 * time.Hour)
	release()
	if kt := refused("c"); kt.retryAfter != 1010*time.Second {
		t.Errorf("after a long overdraft: %+v, want 1010 s", kt)
	}
	// And the bucket never holds more than one budget.
	advance(100 * time.Hour)
	if got := r.kernelTimeLeft("c"); got != budget.perAddr {
		t.Errorf("left after a long rest %v, want %v", got, budget.perAddr)
	}

	// Addresses whose bucket is full again and that hold nothing are
	// forgotten.
	for i := range sweepEvery {
		reserve("x" + strconv.Itoa(i))()
	}
	advance(budget.window)
	for range sweepEvery {
		reserve("last")()
	}
	if n := len(r.used); n != 1 {
		t.Errorf("%d addresses remembered after a window of rest, want 1", n)
	}
}
