package kernelpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

func TestLeaseExecute(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 4)
	k := lease(t, p, "python3")
	defer k.Shutdown()
	out, reply := run(t, k, "print('hello'); 1+1")
	if out.stdout != "hello\n" || out.result != "2" {
		t.Errorf("outputs = %+v", out)
	}
	var r jupytermsg.ExecuteReply
	if err := reply.DecodeContent(&r); err != nil || r.Status != "ok" {
		t.Errorf("reply = %s (%v)", reply.Content, err)
	}
	cwd, _ := run(t, k, "import os; print(os.getcwd())")
	if strings.TrimSpace(cwd.stdout) != k.WorkDir {
		t.Errorf("kernel cwd %q, want its work dir %q", cwd.stdout, k.WorkDir)
	}
}

func TestLeasedKernelIsNeverHandedOutAgain(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 6)
	seen := map[string]bool{}
	var kernels []*Kernel
	for range 4 {
		k := lease(t, p, "python3")
		if seen[k.ID] {
			t.Fatalf("kernel %s leased twice", k.ID)
		}
		seen[k.ID] = true
		kernels = append(kernels, k)
	}
	for _, k := range kernels {
		k.Shutdown()
	}
}

// readyKernel waits for a ready kernel in the pool other than not.
func readyKernel(t *testing.T, p *Pool, name string, not *Kernel) *Kernel {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		sp := p.specs[name]
		if len(sp.ready) > 0 && sp.ready[0] != not {
			k := sp.ready[0]
			p.mu.Unlock()
			return k
		}
		p.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("pool never became ready")
	return nil
}

func TestKilledKernelIsDeclaredDeadAndReplaced(t *testing.T) {
	cases := map[string]func(pid int){
		"kill -9":           func(pid int) { syscall.Kill(-pid, syscall.SIGKILL) },
		"stopped (no beat)": func(pid int) { syscall.Kill(-pid, syscall.SIGSTOP) },
	}
	for name, attack := range cases {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, map[string]int{"python3": 1}, 2)
			victim := readyKernel(t, p, "python3", nil)
			pid := victim.Pid()
			attack(pid)
			select {
			case <-victim.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("dead kernel not noticed")
			}
			if !errors.Is(victim.Err(), ErrKernelDied) {
				t.Errorf("Err = %v, want ErrKernelDied", victim.Err())
			}
			readyKernel(t, p, "python3", victim)
			p.mu.Lock()
			for _, k := range p.specs["python3"].ready {
				if k == victim {
					t.Error("dead kernel still in the pool")
				}
			}
			p.mu.Unlock()
			waitGone(t, pid)
			// Done closes when death is noticed; the reaping that
			// removes the directories follows it.
			select {
			case <-victim.cleaned:
			case <-time.After(30 * time.Second):
				t.Fatal("dead kernel never reaped")
			}
			if _, err := os.Stat(victim.WorkDir); !os.IsNotExist(err) {
				t.Errorf("work dir of dead kernel left behind: %v", err)
			}
		})
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; processExists(pid); i++ {
		if i > 100 {
			t.Fatalf("process %d still exists", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLeaseWaitsThenFailsClearly(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 1)
	k := lease(t, p, "python3")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p.Lease(ctx, LeaseRequest{Kernel: "python3"})
	if !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "1 of 1 kernels in use") {
		t.Fatalf("lease at capacity: %v", err)
	}
	// Freeing the only slot lets a waiting lease through.
	got := make(chan *Kernel)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		k2, err := p.Lease(ctx, LeaseRequest{Kernel: "python3"})
		if err != nil {
			t.Error(err)
		}
		got <- k2
	}()
	time.Sleep(100 * time.Millisecond)
	k.Shutdown()
	if k2 := <-got; k2 != nil {
		if k2.ID == k.ID {
			t.Error("used kernel returned to the pool")
		}
		k2.Shutdown()
	}
	if _, err := p.Lease(context.Background(), LeaseRequest{Kernel: "cobol"}); !errors.Is(err, ErrUnknownKernel) {
		t.Errorf("unknown spec: %v", err)
	}
}

func TestBrokenKernelFailsWithItsOutput(t *testing.T) {
	specs := map[string]jupytermsg.Spec{"broken": {Name: "broken", KernelSpec: jupytermsg.KernelSpec{
		Argv: []string{"/bin/sh", "-c", "echo no such module >&2; exit 3"}}}}
	p, err := New(Config{Specs: specs, Ready: map[string]int{"broken": 1}, MaxKernels: 2, Kernel: testKernelConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = p.Lease(ctx, LeaseRequest{Kernel: "broken"})
	if !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "no such module") {
		t.Fatalf("lease of a broken kernel: %v", err)
	}
}

func TestFiftyLeasesLeaveNothingBehind(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 4)
	cfg := p.cfg.Kernel
	var pids []int
	for range 50 {
		k := lease(t, p, "python3")
		pids = append(pids, k.Pid())
		k.Shutdown()
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{cfg.RuntimeRoot, cfg.WorkRoot} {
		if left, _ := os.ReadDir(root); len(left) != 0 {
			t.Errorf("%s holds %d leftover entries", root, len(left))
		}
	}
	if zombies := zombieChildren(); len(zombies) > 0 {
		t.Errorf("zombie children: %v", zombies)
	}
}

// zombieChildren lists this process's children in state Z.
func zombieChildren() []string {
	return children(func(state string) bool { return state == "Z" })
}

// children lists this process's children whose state (R, S, Z, ...) is
// wanted.
func children(wanted func(state string) bool) []string {
	entries, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	var found []string
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
		fields := strings.Fields(rest)
		if len(fields) > 1 && fields[1] == self && wanted(fields[0]) {
			found = append(found, e.Name())
		}
	}
	return found
}

func TestSageKernel(t *testing.T) {
	if _, ok := installedSpecs(t)["sagemath"]; !ok {
		t.Fatal("sagemath kernelspec missing: make deps installs sagemath-jupyter")
	}
	p := newTestPool(t, map[string]int{"sagemath": 1}, 2)
	k := lease(t, p, "sagemath")
	defer k.Shutdown()
	out, _ := run(t, k, "factor(2^64-1)")
	if out.result != "3 * 5 * 17 * 257 * 641 * 65537 * 6700417" {
		t.Errorf("sage result %+v", out)
	}
}

func TestConcurrentLeases(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 4)
	var wg sync.WaitGroup
	ids := make(chan string, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := lease(t, p, "python3")
			ids <- k.ID
			if out, _ := run(t, k, "1+1"); out.result != "2" {
				t.Errorf("got %+v", out)
			}
			k.Shutdown()
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatal("a kernel went to two leases")
		}
		seen[id] = true
	}
}

// countingLauncher records how many kernel starts run at once: from
// Launch to the pool's OnStart, which StartKernel's return precedes.
type countingLauncher struct {
	sandbox.Launcher
	mu            sync.Mutex
	inFlight, max int
}

func (c *countingLauncher) Launch(ctx context.Context, req sandbox.Request) (*sandbox.Process, error) {
	c.mu.Lock()
	c.inFlight++
	c.max = max(c.max, c.inFlight)
	c.mu.Unlock()
	return c.Launcher.Launch(ctx, req)
}

func (c *countingLauncher) started(string, time.Duration, error) {
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
}

func TestMaxConcurrentStarts(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(strconv.Itoa(limit), func(t *testing.T) {
			counter := &countingLauncher{Launcher: sandbox.None{}}
			cfg := testKernelConfig(t)
			cfg.Launcher = counter
			p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{"python3": 3}, MaxKernels: 3,
				MaxConcurrentStarts: limit, Kernel: cfg, OnStart: counter.started})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(context.Background())
			for deadline := time.Now().Add(hangGuard); !(p.Stats()[0].Ready == 3); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("pool never warmed: %+v", p.Stats())
				}
			}
			counter.mu.Lock()
			defer counter.mu.Unlock()
			if counter.max > limit {
				t.Errorf("%d kernels started at once, limit %d", counter.max, limit)
			}
		})
	}
}

func specStats(t *testing.T, p *Pool, name string) Stats {
	t.Helper()
	for _, s := range p.Stats() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no stats for %s", name)
	return Stats{}
}

func waitClosed(t *testing.T, p *Pool) {
	t.Helper()
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(10 * time.Millisecond) {
		p.mu.Lock()
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Close never began")
		}
	}
}

// TestLeaseOfDeadReadyKernelKeepsCounts: Lease may take a kernel that died
// in the pool out of ready before the pool's tracker has seen the death;
// the tracker must not count it as a lease ending then.
func TestLeaseOfDeadReadyKernelKeepsCounts(t *testing.T) {
	// One kernel at most: the replacement can only start once the
	// tracker has freed the dead kernel's place.
	p := newTestPool(t, map[string]int{"python3": 1}, 1)
	victim := readyKernel(t, p, "python3", nil)
	p.mu.Lock()
	if err := syscall.Kill(-victim.Pid(), syscall.SIGKILL); err != nil {
		p.mu.Unlock()
		t.Fatal(err)
	}
	<-victim.Done() // the tracker now waits for p.mu
	got := p.takeReadyLocked(p.specs["python3"])
	p.mu.Unlock()
	if got != nil {
		t.Fatalf("Lease took a dead kernel")
	}
	readyKernel(t, p, "python3", victim)
	if st := specStats(t, p, "python3"); st.Leased != 0 || st.Ready != 1 {
		t.Errorf("after a dead kernel was skipped: %+v, want 0 leased, 1 ready", st)
	}
	k := lease(t, p, "python3")
	if st := specStats(t, p, "python3"); st.Leased != 1 {
		t.Errorf("with one lease: %+v", st)
	}
	k.Shutdown()
	for deadline := time.Now().Add(hangGuard); specStats(t, p, "python3").Leased != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lease never ended: %+v", specStats(t, p, "python3"))
		}
	}
}

// TestCloseWaitsForKernelReadyDuringClose: a kernel whose start finishes
// after Close began is shut down by the pool, and Close returns only once
// it is gone.
func TestCloseWaitsForKernelReadyDuringClose(t *testing.T) {
	cfg := testKernelConfig(t)
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var startErr error
	p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{"python3": 1}, MaxKernels: 1, Kernel: cfg,
		OnStart: func(_ string, _ time.Duration, err error) {
			once.Do(func() {
				startErr = err
				close(started)
				<-release
			})
		}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, started, "the first kernel start")
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		closed <- p.Close(ctx)
	}()
	waitClosed(t, p)
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if startErr != nil {
		t.Fatalf("the start failed (%v), so the branch under test did not run", startErr)
	}
	assertEmpty(t, cfg.RuntimeRoot, cfg.WorkRoot)
	if kids := children(func(state string) bool { return state != "Z" }); len(kids) > 0 {
		t.Errorf("processes left after Close: %v", kids)
	}
}

// TestCloseShutsDownKernelOfAbandonedLease: a kernel handed to a Lease
// whose context ended at that moment goes back to the pool, unless Close
// has already collected the pool's kernels: then nobody else would shut it
// down, and Close would wait for it in vain.
func TestCloseShutsDownKernelOfAbandonedLease(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 1)
	k := readyKernel(t, p, "python3", nil)
	pgid := k.Pid()
	sp := p.specs["python3"]
	// What readyLocked does for a waiting Lease.
	p.mu.Lock()
	handed := p.takeReadyLocked(sp)
	p.mu.Unlock()
	if handed != k {
		t.Fatal("ready kernel not taken")
	}
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		closed <- p.Close(ctx)
	}()
	waitClosed(t, p)
	// The Lease gives up after Close took its snapshot.
	p.mu.Lock()
	p.unclaimedLocked(sp, handed)
	p.mu.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if !errors.Is(k.Err(), ErrKernelGone) {
		t.Errorf("abandoned kernel: Err = %v, want it shut down", k.Err())
	}
	assertKernelGone(t, k, pgid)
}

// TestSandboxedKernel runs the pool's life cycle with kernels inside the
// real bwrap sandbox.
func TestSandboxedKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root to switch kernels to their own uids")
	}
	specs := installedSpecs(t) // before NewBwrap's trial run: go test -short skips here
	scfg := sandbox.DefaultConfig()
	scfg.Fork = false // cold: TestForkedKernels covers forked kernels
	launcher, err := sandbox.NewBwrap(scfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testKernelConfig(t)
	cfg.Launcher = launcher
	p, err := New(Config{Specs: specs, Ready: map[string]int{"python3": 1}, MaxKernels: 3, Kernel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	k := lease(t, p, "python3")
	out, _ := run(t, k, "import os; print(os.getuid()); 1+1")
	uid, _ := strconv.Atoi(strings.TrimSpace(out.stdout))
	if out.result != "2" || uid == 0 || uid == os.Getuid() {
		t.Errorf("sandboxed kernel: %+v", out)
	}
	interruptAndRestart(t, k, "the sandbox")
	work := k.WorkDir
	k.Shutdown()
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Errorf("work dir left behind: %v", err)
	}
}

// slowSpec is the installed python3 kernel behind a start-up delay: a
// kernelspec whose starts take at least delay, whatever the machine.
func slowSpec(t *testing.T, delay time.Duration) jupytermsg.Spec {
	t.Helper()
	py := installedSpecs(t)["python3"]
	argv := append([]string{"/bin/sh", "-c", fmt.Sprintf("sleep %.1f; exec \"$@\"", delay.Seconds()), "sh"}, py.Argv...)
	return jupytermsg.Spec{Name: "slow", KernelSpec: jupytermsg.KernelSpec{Argv: argv, Language: py.Language, DisplayName: "slow"}}
}

// syncBuffer is a log sink tests read while the pool writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newPool is New with the test's kernel config and Close at cleanup.
func newPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	if cfg.Specs == nil {
		cfg.Specs = installedSpecs(t)
	}
	if cfg.Kernel.Launcher == nil {
		cfg.Kernel = testKernelConfig(t)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return p
}

// waitStats waits until the spec's stats satisfy ok.
func waitStats(t *testing.T, p *Pool, name, what string, ok func(Stats) bool) Stats {
	t.Helper()
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(20 * time.Millisecond) {
		st := specStats(t, p, name)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("never %s: %+v", what, st)
		}
	}
}

// TestBurstLargerThanPoolWaitsInsteadOfFailing: more concurrent leases
// than ready kernels all get a kernel, none refused, when the queue's wait
// fits their deadline.
func TestBurstLargerThanPoolWaitsInsteadOfFailing(t *testing.T) {
	const burst = 5
	p := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: burst + 1})
	waitStats(t, p, "python3", "warm", func(s Stats) bool { return s.Ready == 1 })
	var wg sync.WaitGroup
	errs := make(chan error, burst)
	ids := make(chan string, burst)
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			k, err := p.Lease(ctx, LeaseRequest{Kernel: "python3", Client: fmt.Sprintf("10.0.0.%d", i)})
			if err != nil {
				errs <- err
				return
			}
			ids <- k.ID
			k.Shutdown()
		}()
	}
	wg.Wait()
	close(errs)
	close(ids)
	for err := range errs {
		t.Errorf("a lease of the burst failed: %v", err)
	}
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Errorf("kernel %s leased twice", id)
		}
		seen[id] = true
	}
	if len(seen) != burst {
		t.Errorf("%d kernels leased, want %d", len(seen), burst)
	}
}

// TestFairQueueDoesNotStarveASingleWaiter: with kernels coming one at a
// time, a client with four leases waiting does not keep another client's
// single lease behind all four.
func TestFairQueueDoesNotStarveASingleWaiter(t *testing.T) {
	// One kernel at most: each waiter is served only once the kernel
	// before it is shut down, so the order of service is the queue's.
	p := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: 1})
	held := lease(t, p, "python3")
	type got struct {
		who string
		k   *Kernel
	}
	order := make(chan got, 5)
	var wg sync.WaitGroup
	queue := func(client, who string, waiting int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			k, err := p.Lease(ctx, LeaseRequest{Kernel: "python3", Client: client})
			if err != nil {
				t.Error(err)
				return
			}
			order <- got{who, k}
		}()
		waitStats(t, p, "python3", fmt.Sprintf("%d waiting", waiting), func(s Stats) bool { return s.Waiting == waiting })
	}
	for i := range 4 {
		queue("198.51.100.1", fmt.Sprintf("crowd%d", i), i+1)
	}
	queue("203.0.113.9", "single", 5)
	held.Shutdown()
	var served []string
	for range 5 {
		g := <-order
		served = append(served, g.who)
		g.k.Shutdown()
	}
	wg.Wait()
	want := []string{"crowd0", "single", "crowd1", "crowd2", "crowd3"}
	if !slices.Equal(served, want) {
		t.Errorf("served %v, want %v", served, want)
	}
}

// TestFIFOQueueServesInArrivalOrder: QueueFIFO, the old behaviour, serves
// the same arrivals first come first served.
func TestFIFOQueueServesInArrivalOrder(t *testing.T) {
	p := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: 1, Queue: QueueFIFO})
	held := lease(t, p, "python3")
	order := make(chan string, 3)
	for i, client := range []string{"a", "a", "b"} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			k, err := p.Lease(ctx, LeaseRequest{Kernel: "python3", Client: client})
			if err != nil {
				t.Error(err)
				order <- ""
				return
			}
			order <- fmt.Sprint(i)
			k.Shutdown()
		}()
		waitStats(t, p, "python3", "queued", func(s Stats) bool { return s.Waiting == i+1 })
	}
	held.Shutdown()
	var served []string
	for range 3 {
		served = append(served, <-order)
	}
	if want := []string{"0", "1", "2"}; !slices.Equal(served, want) {
		t.Errorf("served %v, want %v", served, want)
	}
}

// TestLeaseRefusedWhenExpectedWaitExceedsDeadline: with starts that take
// at least 3 s, a lease that would wait behind another for a new start is
// refused at once when its deadline is 1 s away, while one whose deadline
// allows the wait is served.
func TestLeaseRefusedWhenExpectedWaitExceedsDeadline(t *testing.T) {
	spec := slowSpec(t, 3*time.Second)
	p := newPool(t, Config{Specs: map[string]jupytermsg.Spec{"slow": spec}, Ready: map[string]int{"slow": 1},
		MaxKernels: 4, MaxConcurrentStarts: 1, MemoryBudget: -1})
	waitStats(t, p, "slow", "warm", func(s Stats) bool { return s.Ready == 1 })
	first := lease(t, p, "slow") // the refill starts now
	defer first.Shutdown()
	served := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		k, err := p.Lease(ctx, LeaseRequest{Kernel: "slow", Client: "a"})
		if err == nil {
			k.Shutdown()
		}
		served <- err
	}()
	waitStats(t, p, "slow", "a lease waiting", func(s Stats) bool { return s.Waiting == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	began := time.Now()
	_, err := p.Lease(ctx, LeaseRequest{Kernel: "slow", Client: "b"})
	var we *WaitError
	if !errors.As(err, &we) || !errors.Is(err, ErrNoKernel) || !errors.Is(err, ErrWaitTooLong) {
		t.Fatalf("lease behind a 3 s start with 1 s to spare: %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("refused only after waiting out its deadline (%v)", time.Since(began))
	}
	if we.Place != 2 || we.Wait < 3*time.Second || we.Wait <= we.Within {
		t.Errorf("refusal: %+v", we)
	}
	if err := <-served; err != nil {
		t.Errorf("the lease whose deadline allowed the wait: %v", err)
	}
}

// TestPoolGrowsUnderBurstAndShrinksAfter: a burst makes the pool keep
// more kernels ready, up to MaxKernels; once the demand window has passed
// without leases it is back at its floor; the log says both.
func TestPoolGrowsUnderBurstAndShrinksAfter(t *testing.T) {
	var logs syncBuffer
	kcfg := testKernelConfig(t)
	kcfg.Log = zerolog.New(io.MultiWriter(&logs, zerolog.NewTestWriter(t))).Level(zerolog.InfoLevel)
	const maxKernels = 4
	// A window long enough for the grown pool's kernels to start on a
	// loaded machine (starts took 8 s each in one make test run), which
	// the 30 s it was were not: the pool shrank before they were ready.
	p := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: maxKernels, DemandWindow: 90 * time.Second, Kernel: kcfg})
	waitStats(t, p, "python3", "warm", func(s Stats) bool { return s.Ready == 1 })
	leaseBurst(t, p, maxKernels+1)
	grown := waitStats(t, p, "python3", "grown", func(s Stats) bool { return s.Ready == maxKernels })
	if grown.Target != maxKernels || grown.Demand <= maxKernels {
		t.Errorf("grown pool: %+v, want target %d (MaxKernels) below its demand", grown, maxKernels)
	}
	if !strings.Contains(logs.String(), "kernel pool grows") || !strings.Contains(logs.String(), `"capped_by":"max kernels"`) {
		t.Errorf("log does not say the pool grew up to MaxKernels:\n%s", logs.String())
	}
	shrunk := waitStats(t, p, "python3", "back at the floor", func(s Stats) bool { return s.Target == 1 && s.Ready == 1 && s.Demand == 0 })
	if shrunk.Want != 1 {
		t.Errorf("floor changed: %+v", shrunk)
	}
	if !strings.Contains(logs.String(), "kernel pool shrinks") {
		t.Errorf("log does not say the pool shrank:\n%s", logs.String())
	}
	// The retired kernels are gone, not leaked.
	for deadline := time.Now().Add(hangGuard); p.liveCount() != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d kernels live after shrinking to 1", p.liveCount())
		}
	}
}

// TestMemoryBudgetCapsGrowth: the same burst with a budget of about three
// kernels grows the pool only as far as the measured kernels fit.
func TestMemoryBudgetCapsGrowth(t *testing.T) {
	var logs syncBuffer
	kcfg := testKernelConfig(t)
	kcfg.Log = zerolog.New(io.MultiWriter(&logs, zerolog.NewTestWriter(t))).Level(zerolog.InfoLevel)
	const budget = 3 * DefaultKernelMemory
	p := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: 12, MemoryBudget: budget, Kernel: kcfg})
	waitStats(t, p, "python3", "warm", func(s Stats) bool { return s.Ready == 1 })
	if m := specStats(t, p, "python3").KernelMemory; m == DefaultKernelMemory || m < 8<<20 {
		t.Fatalf("kernel memory not measured: %d bytes", m)
	}
	leaseBurst(t, p, 8)
	st := waitStats(t, p, "python3", "refilled to its target", func(s Stats) bool { return s.Starting == 0 && s.Ready == s.Target })
	if st.Demand <= st.Target {
		t.Fatalf("the budget was not what held the pool back: %+v", st)
	}
	if int64(st.Target)*st.KernelMemory > budget || int64(st.Target+1)*st.KernelMemory <= budget {
		t.Errorf("target %d kernels of %d MiB for a budget of %d MiB", st.Target, st.KernelMemory>>20, budget>>20)
	}
	if !strings.Contains(logs.String(), `"capped_by":"memory budget"`) {
		t.Errorf("log does not say the budget capped the pool:\n%s", logs.String())
	}
	// No growth at all with a negative budget.
	p2 := newPool(t, Config{Ready: map[string]int{"python3": 1}, MaxKernels: 4, MemoryBudget: -1})
	var wg2 sync.WaitGroup
	for range 3 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			if k, err := p2.Lease(ctx, LeaseRequest{Kernel: "python3"}); err != nil {
				t.Error(err)
			} else {
				k.Shutdown()
			}
		}()
	}
	wg2.Wait()
	if st := specStats(t, p2, "python3"); st.Target != 1 || st.Demand < 2 {
		t.Errorf("pool without growth: %+v", st)
	}
}

// TestRefillIsHeldWhileAnotherKernelIsReady: the start that replaces a
// leased kernel waits RefillDelay (here an hour) while the spec still has
// a kernel ready, so it does not run beside the leased kernel's first
// execution; the lease of the last ready kernel starts both refills at
// once.
func TestRefillIsHeldWhileAnotherKernelIsReady(t *testing.T) {
	p := newPool(t, Config{Ready: map[string]int{"python3": 2}, MaxKernels: 4, MemoryBudget: -1, RefillDelay: time.Hour})
	waitStats(t, p, "python3", "warm", func(s Stats) bool { return s.Ready == 2 && s.Starting == 0 })
	first := lease(t, p, "python3")
	defer first.Shutdown()
	if st := specStats(t, p, "python3"); st.Ready != 1 || st.Starting != 0 {
		t.Errorf("after a lease with a kernel still ready: %+v, want the refill held", st)
	}
	if out, _ := run(t, first, "1+1"); out.result != "2" {
		t.Errorf("first execution: %+v", out)
	}
	if st := specStats(t, p, "python3"); st.Starting != 0 {
		t.Errorf("refill started within RefillDelay: %+v", st)
	}
	second := lease(t, p, "python3")
	defer second.Shutdown()
	waitStats(t, p, "python3", "refilled after the last ready kernel was leased", func(s Stats) bool { return s.Ready == 2 })
}

// TestFitReady: the pool a server keeps when told nothing fits any
// --max-kernels, trimming the largest first, and is left alone when it fits.
func TestFitReady(t *testing.T) {
	for _, c := range []struct {
		ready map[string]int
		most  int
		want  map[string]int
	}{
		{map[string]int{"python3": 4, "sagemath": 1}, 8, map[string]int{"python3": 4, "sagemath": 1}},
		{map[string]int{"python3": 4, "sagemath": 1}, 4, map[string]int{"python3": 3, "sagemath": 1}},
		{map[string]int{"python3": 4, "sagemath": 1}, 2, map[string]int{"python3": 1, "sagemath": 1}},
		{map[string]int{"python3": 4, "sagemath": 1}, 1, map[string]int{"python3": 1}},
		{map[string]int{}, 1, map[string]int{}},
	} {
		if got := fitReady(maps.Clone(c.ready), c.most); !reflect.DeepEqual(got, c.want) {
			t.Errorf("fitReady(%v, %d) = %v, want %v", c.ready, c.most, got, c.want)
		}
	}
}
