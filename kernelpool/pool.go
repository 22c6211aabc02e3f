package kernelpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	zmq "github.com/pebbe/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// Errors Lease returns.
var (
	ErrUnknownKernel = errors.New("no such kernelspec")
	ErrNoKernel      = errors.New("no kernel ready in time")
	ErrPoolClosed    = errors.New("kernel pool is closed")
)

// Config configures a Pool. Start from DefaultConfig; a field left zero
// takes its default too.
type Config struct {
	Specs map[string]jupytermsg.Spec
	// Ready is how many idle, ready kernels to keep per kernelspec name.
	Ready map[string]int
	// MaxKernels caps every kernel the pool owns: ready, starting and leased.
	MaxKernels int
	// MaxConcurrentStarts bounds simultaneous kernel starts; many at once
	// starve each other and all time out.
	MaxConcurrentStarts int
	// MaxSockets is libzmq's socket limit for the pool's context; a kernel
	// uses about ten. Zero means DefaultMaxSockets.
	MaxSockets int
	Kernel     KernelConfig
	// OnStart, if set, is told of every kernel start.
	OnStart func(spec string, took time.Duration, err error)
	// Metrics is where the pool registers its series (kernel starts,
	// kernels per state); nil registers none.
	Metrics prometheus.Registerer
}

// DefaultReady is the pool size used when Config.Ready is nil.
func DefaultReady() map[string]int { return map[string]int{"python3": 2} }

// DefaultConfig is the pool's settings when nothing is said: the one place
// each default lives (cellgate's flags take theirs from here). Specs and
// Kernel.Launcher have none; the caller must give them.
func DefaultConfig() Config {
	return Config{
		Ready:               DefaultReady(),
		MaxKernels:          16,
		MaxConcurrentStarts: 2,
		MaxSockets:          DefaultMaxSockets,
		Kernel:              DefaultKernelConfig(),
	}
}

// Pool keeps prewarmed kernels per kernelspec and leases them out.
type Pool struct {
	cfg     Config
	zctx    *zmq.Context
	log     zerolog.Logger
	metrics *metrics

	mu       sync.Mutex
	specs    map[string]*specPool
	live     int // ready + starting + leased
	starting int
	closed   bool

	runCtx context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

type specPool struct {
	name     string
	want     int
	ready    []*Kernel
	starting int
	// leased holds the kernels handed out and not yet ended. A set, not a
	// count: whether a kernel that ends was leased must not depend on
	// whether Lease or track saw its death first.
	leased   map[*Kernel]struct{}
	waiters  []chan *Kernel
	lastErr  error
	failures int
	retryAt  time.Time
}

// Stats is a snapshot of one kernelspec's pool.
type Stats struct {
	Name     string
	Want     int
	Ready    int
	Starting int
	Leased   int
	Waiting  int
	LastErr  error
}

// New starts a pool and begins warming kernels at once.
func New(cfg Config) (*Pool, error) {
	d := DefaultConfig()
	// An empty Ready map is a pool that keeps no kernel ready; only nil
	// means "not said".
	if cfg.Ready == nil {
		cfg.Ready = d.Ready
	}
	orDefault(&cfg.MaxKernels, d.MaxKernels)
	orDefault(&cfg.MaxConcurrentStarts, d.MaxConcurrentStarts)
	orDefault(&cfg.MaxSockets, d.MaxSockets)
	if cfg.Kernel.Launcher == nil {
		return nil, errors.New("kernel pool: no launcher")
	}
	cfg.Kernel.applyDefaults()
	total := 0
	for name, n := range cfg.Ready {
		if _, ok := cfg.Specs[name]; !ok {
			return nil, fmt.Errorf("kernel pool: %w %q (installed: %v)", ErrUnknownKernel, name, jupytermsg.SortedNames(cfg.Specs))
		}
		if n < 0 {
			return nil, fmt.Errorf("kernel pool: negative size %d for %s", n, name)
		}
		total += n
	}
	if total > cfg.MaxKernels {
		return nil, fmt.Errorf("kernel pool: %d ready kernels wanted but at most %d kernels allowed", total, cfg.MaxKernels)
	}
	zctx, err := NewZMQContext(cfg.MaxSockets)
	if err != nil {
		return nil, fmt.Errorf("kernel pool: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Pool{
		cfg: cfg, zctx: zctx, log: cfg.Kernel.Log,
		specs:  map[string]*specPool{},
		runCtx: ctx, stop: stop,
	}
	for name := range cfg.Specs {
		p.specs[name] = &specPool{name: name, want: cfg.Ready[name], leased: map[*Kernel]struct{}{}}
	}
	// Registered before the first start, so every start is counted.
	p.metrics = newMetrics(cfg.Metrics, p)
	p.wg.Add(1)
	go p.retryLoop()
	p.mu.Lock()
	p.fillLocked()
	p.mu.Unlock()
	return p, nil
}

// Specs returns the kernelspecs the pool can start.
func (p *Pool) Specs() map[string]jupytermsg.Spec { return p.cfg.Specs }

// Launcher is the launcher kernels start through.
func (p *Pool) Launcher() sandbox.Launcher { return p.cfg.Kernel.Launcher }

// Lease hands out a ready kernel of the named spec, exclusively and for
// good: the caller must Shutdown it. With no kernel ready, it waits for the
// next one until ctx ends.
func (p *Pool) Lease(ctx context.Context, name string) (*Kernel, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrPoolClosed
	}
	sp, ok := p.specs[name]
	if !ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w %q", ErrUnknownKernel, name)
	}
	if k := p.takeReadyLocked(sp); k != nil {
		p.mu.Unlock()
		return k, nil
	}
	waiter := make(chan *Kernel, 1)
	sp.waiters = append(sp.waiters, waiter)
	p.fillLocked()
	p.mu.Unlock()

	select {
	case k := <-waiter:
		if k == nil {
			return nil, ErrPoolClosed
		}
		return k, nil
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		for i, w := range sp.waiters {
			if w == waiter {
				sp.waiters = append(sp.waiters[:i], sp.waiters[i+1:]...)
				break
			}
		}
		// A kernel may have been handed over just as the wait ended.
		select {
		case k := <-waiter:
			if k != nil {
				p.unclaimedLocked(sp, k)
			}
		default:
		}
		reason := fmt.Sprintf("%s: %d of %d kernels in use", ctx.Err(), p.live, p.cfg.MaxKernels)
		if sp.lastErr != nil {
			reason += "; last start failed: " + sp.lastErr.Error()
		}
		return nil, fmt.Errorf("%w (%s): %s", ErrNoKernel, name, reason)
	}
}

// takeReadyLocked leases the first live ready kernel, or returns nil.
// Dead ones are dropped; track frees their place.
func (p *Pool) takeReadyLocked(sp *specPool) *Kernel {
	for len(sp.ready) > 0 {
		k := sp.ready[0]
		sp.ready[0] = nil
		sp.ready = sp.ready[1:]
		select {
		case <-k.Done():
			continue
		default:
		}
		sp.leased[k] = struct{}{}
		p.fillLocked()
		return k
	}
	return nil
}

// unclaimedLocked takes back k, handed to a waiter that gave up. It is
// unused, so it may wait for the next lease; but once Close has taken its
// snapshot of ready kernels, nobody else would shut it down.
func (p *Pool) unclaimedLocked(sp *specPool, k *Kernel) {
	delete(sp.leased, k)
	select {
	case <-k.Done():
		return // track frees its place
	default:
	}
	if p.closed {
		p.shutdownLocked(k)
		return
	}
	p.readyLocked(sp, k)
}

// shutdownLocked shuts k down in the background, within p.wg, so that
// Close does not return before k is gone.
func (p *Pool) shutdownLocked(k *Kernel) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		k.Shutdown()
	}()
}

// fillLocked starts kernels until every spec has what it wants (its ready
// size plus its waiters), within the caps.
func (p *Pool) fillLocked() {
	if p.closed {
		return
	}
	now := time.Now()
	for progress := true; progress; {
		progress = false
		for _, sp := range p.specs {
			need := sp.want + len(sp.waiters) - len(sp.ready) - sp.starting
			if need <= 0 || now.Before(sp.retryAt) {
				continue
			}
			if p.live >= p.cfg.MaxKernels || p.starting >= p.cfg.MaxConcurrentStarts {
				return
			}
			sp.starting++
			p.starting++
			p.live++
			p.wg.Add(1)
			go p.startOne(sp)
			progress = true
		}
	}
}

func (p *Pool) startOne(sp *specPool) {
	defer p.wg.Done()
	cfg := p.cfg.Kernel
	cfg.Spec = p.cfg.Specs[sp.name]
	began := time.Now()
	k, err := StartKernel(p.runCtx, p.zctx, cfg)
	p.metrics.started(sp.name, time.Since(began), err)
	if p.cfg.OnStart != nil {
		p.cfg.OnStart(sp.name, time.Since(began), err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sp.starting--
	p.starting--
	if err != nil {
		p.live--
		sp.lastErr = err
		sp.failures++
		backoff := time.Duration(1<<min(sp.failures-1, 5)) * time.Second
		sp.retryAt = time.Now().Add(backoff)
		if p.runCtx.Err() == nil {
			p.log.Error().Err(err).Str("spec", sp.name).Dur("retry_in", backoff).Msg("kernel start failed")
		}
		p.fillLocked()
		return
	}
	sp.lastErr, sp.failures = nil, 0
	p.log.Debug().Str("kernel", k.ID).Str("spec", sp.name).Dur("took", time.Since(began)).Msg("kernel ready")
	if p.closed {
		p.live--
		p.shutdownLocked(k)
		return
	}
	p.wg.Add(1)
	go p.track(sp, k)
	p.readyLocked(sp, k)
	p.fillLocked()
}

// readyLocked hands k to the first waiter, or keeps it ready.
func (p *Pool) readyLocked(sp *specPool, k *Kernel) {
	if len(sp.waiters) > 0 {
		w := sp.waiters[0]
		sp.waiters = sp.waiters[1:]
		sp.leased[k] = struct{}{}
		w <- k
		return
	}
	sp.ready = append(sp.ready, k)
}

// track frees k's place in the pool once it ends, in the pool or leased.
func (p *Pool) track(sp *specPool, k *Kernel) {
	defer p.wg.Done()
	<-k.Done()
	// Close must not end the zmq context under a kernel still tearing down.
	defer func() { <-k.cleaned }()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live--
	if _, ok := sp.leased[k]; ok {
		delete(sp.leased, k)
	} else {
		// In the pool, or taken out of it dead by Lease.
		for i, r := range sp.ready {
			if r == k {
				sp.ready = append(sp.ready[:i], sp.ready[i+1:]...)
				break
			}
		}
		if !p.closed {
			p.log.Warn().Str("kernel", k.ID).Str("spec", sp.name).Err(k.Err()).Msg("ready kernel died; replacing it")
		}
	}
	p.fillLocked()
}

// retryLoop retries failed starts once their backoff has passed.
func (p *Pool) retryLoop() {
	defer p.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.runCtx.Done():
			return
		case <-t.C:
			p.mu.Lock()
			p.fillLocked()
			p.mu.Unlock()
		}
	}
}

// Stats returns a snapshot per kernelspec, sorted by name.
func (p *Pool) Stats() []Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Stats, 0, len(p.specs))
	for _, name := range jupytermsg.SortedNames(p.cfg.Specs) {
		sp := p.specs[name]
		out = append(out, Stats{Name: name, Want: sp.want, Ready: len(sp.ready), Starting: sp.starting,
			Leased: len(sp.leased), Waiting: len(sp.waiters), LastErr: sp.lastErr})
	}
	return out
}

// Warm reports whether every spec with a ready size has a ready kernel.
func (p *Pool) Warm() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range p.specs {
		if sp.want > 0 && len(sp.ready) == 0 {
			return false
		}
	}
	return true
}

// Close stops warming, shuts down every kernel the pool still holds and
// waits for starts in flight. Leased kernels belong to their holders, who
// must shut them down; Close waits for them too, up to ctx.
func (p *Pool) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var ready []*Kernel
	for _, sp := range p.specs {
		ready = append(ready, sp.ready...)
		for _, w := range sp.waiters {
			close(w)
		}
		sp.waiters = nil
	}
	p.mu.Unlock()
	p.stop()
	var wg sync.WaitGroup
	for _, k := range ready {
		wg.Add(1)
		go func() { defer wg.Done(); k.Shutdown() }()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("kernel pool close: %w (%d kernels still live)", ctx.Err(), p.liveCount())
	}
	if err := p.zctx.Term(); err != nil {
		return fmt.Errorf("kernel pool close: zmq context: %w", err)
	}
	return nil
}

func (p *Pool) liveCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.live
}
