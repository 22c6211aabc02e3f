package kernelpool

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

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

// TestContextHoldsManySockets: libzmq's default of 1023 sockets would stop
// a gateway at about a hundred kernels.
func TestContextHoldsManySockets(t *testing.T) {
	zctx := testContext(t)
	var socks []*zmq.Socket
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	for i := range 1100 {
		s, err := zctx.NewSocket(zmq.PAIR)
		if err != nil {
			t.Fatalf("socket %d: %v", i, err)
		}
		socks = append(socks, s)
	}
	cfg := testKernelConfig(t)
	p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{}, MaxSockets: 2000, Kernel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if n, err := p.zctx.GetMaxSockets(); err != nil || n != 2000 {
		t.Errorf("pool context max sockets = %d, %v; want the configured 2000", n, err)
	}
}
