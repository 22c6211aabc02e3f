package kernelpool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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
	// Ready is the floor of the pool: how many idle, ready kernels to keep
	// per kernelspec name whatever the demand. The pool grows beyond it
	// while leases ask for more (see MemoryBudget, DemandWindow). nil is
	// AutoReady of Specs, for the kernels the launcher forks (if it says,
	// as sandbox.Bwrap does); an empty map keeps no kernel ready.
	Ready map[string]int
	// MaxKernels caps every kernel the pool owns: ready, starting and leased.
	MaxKernels int
	// MaxConcurrentStarts bounds simultaneous kernel starts; many at once
	// starve each other and all time out.
	MaxConcurrentStarts int
	// Queue is how leases wait when no kernel is ready: QueueFair (the
	// default) or QueueFIFO.
	Queue QueueMode
	// MemoryBudget caps, in bytes, the ready kernels the pool keeps, each
	// counted at its kernelspec's measured PSS (DefaultKernelMemory until
	// one is measured): the pool grows beyond Ready only within it. Ready
	// itself is kept even beyond it. Negative: never grow beyond Ready.
	MemoryBudget int64
	// DemandWindow is how far back leases count toward the pool's size:
	// the pool keeps ready what the leases of the last DemandWindow would
	// have needed at once, and is back at Ready after a DemandWindow
	// without leases.
	DemandWindow time.Duration
	// RefillDelay holds back the start that replaces a leased kernel for
	// this long, so that it does not slow the leased kernel's first
	// execution (a start takes a core for about a second, and slows a
	// kernel running beside it even with a core free), as long as another
	// kernel of the spec is still ready and no lease waits; otherwise the
	// refill starts at once.
	RefillDelay time.Duration
	// MaxSockets is libzmq's socket limit for the pool's context; a kernel
	// uses about ten. Zero means DefaultMaxSockets.
	MaxSockets int
	Kernel     KernelConfig
	// OnStart, if set, is told of every kernel start.
	OnStart func(spec string, took time.Duration, err error)
	// Metrics is where the pool registers its series (kernel starts,
	// kernels per state, the lease queue); nil registers none.
	Metrics prometheus.Registerer
}

// DefaultReady is the part of AutoReady that does not depend on forking:
// what it keeps of python3 when its kernels start cold.
func DefaultReady() map[string]int { return map[string]int{"python3": 2} }

// forkedPython3Ready is how many python3 kernels AutoReady keeps ready
// when they are forked: a page whose ten cells evaluate on load takes
// four at once and the rest come from starts, at about four forked
// kernels a second on two cores (make bench: the page of 10 cells went
// from 2.1 to 1.5 s with four ready instead of two). An idle forked
// kernel costs about 18 MiB (PSS), a cold one 52.
const forkedPython3Ready = 4

// AutoReady is the pool a server keeps when told nothing: DefaultReady,
// more python3 kernels when they are forked (forkedPython3Ready), and one
// ready kernel of every other installed kernelspec that cheap kernels are
// made of (forks says which: the launcher forks them from a template, as
// it does SageMath's), so that a reader choosing one does not wait for its
// start. A kernel that would start cold is not kept ready beyond
// DefaultReady: a cold SageMath kernel costs seconds of CPU and 190 MiB.
// A pool told nothing keeps it within half of MaxKernels (fitReady).
func AutoReady(specs map[string]jupytermsg.Spec, forks func(argv []string) bool) map[string]int {
	ready := map[string]int{}
	for name, n := range DefaultReady() {
		if spec, ok := specs[name]; ok {
			ready[name] = n
			if name == "python3" && forks != nil && forks(spec.Command("kernel.json")) {
				ready[name] = forkedPython3Ready
			}
		}
	}
	for name, spec := range specs {
		if _, ok := ready[name]; !ok && forks != nil && forks(spec.Command("kernel.json")) {
			ready[name] = 1
		}
	}
	return ready
}

// fitReady trims ready, largest first, until it keeps at most most
// kernels: a pool told nothing must start whatever --max-kernels says, and
// leave room for kernels in use.
func fitReady(ready map[string]int, most int) map[string]int {
	for {
		total, largest := 0, ""
		for _, name := range slices.Sorted(maps.Keys(ready)) {
			total += ready[name]
			// Of equals, python3 (the default kernel) is trimmed last.
			if largest == "" || ready[name] > ready[largest] || ready[name] == ready[largest] && largest == "python3" {
				largest = name
			}
		}
		if total <= most {
			return ready
		}
		if ready[largest]--; ready[largest] == 0 {
			delete(ready, largest)
		}
	}
}

// DefaultConfig is the pool's settings when nothing is said: the one place
// each default lives (cellgate's flags take theirs from here). Specs and
// Kernel.Launcher have none; the caller must give them.
func DefaultConfig() Config {
	return Config{
		Ready:               nil, // AutoReady
		MaxKernels:          16,
		MaxConcurrentStarts: 2,
		Queue:               QueueFair,
		MemoryBudget:        1 << 30,
		DemandWindow:        time.Minute,
		RefillDelay:         time.Second,
		MaxSockets:          DefaultMaxSockets,
		Kernel:              DefaultKernelConfig(),
	}
}

// LeaseRequest is what a lease asks for.
type LeaseRequest struct {
	// Kernel is the kernelspec name.
	Kernel string
	// Client is whom the kernel is for (the gateway gives the client's
	// address). When leases wait, clients take turns, and one client's
	// leases are served in the order they came. Empty is one client too.
	Client string
}

// Pool keeps prewarmed kernels per kernelspec and leases them out.
type Pool struct {
	cfg     Config
	zctx    *zmq.Context
	log     zerolog.Logger
	metrics *metrics
	names   []string // the kernelspecs, sorted

	mu       sync.Mutex
	specs    map[string]*specPool
	live     int // ready + starting + leased + retiring
	starting int
	starts   map[*start]struct{}
	closed   bool
	// refill ends the holds of RefillDelay.
	refill *time.Timer

	runCtx context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// start is a kernel start in flight.
type start struct {
	sp    *specPool
	began time.Time
}

// recentStarts and recentMeasures are how many start durations and memory
// measurements a kernelspec's estimates average over.
const (
	recentStarts   = 8
	recentMeasures = 8
	// measureEvery: once recentMeasures kernels of a kernelspec are
	// measured, one start in measureEvery is (a kernel's PSS is a walk of
	// its page tables: milliseconds of the gateway's CPU per start).
	measureEvery = 8
	// maxArrivals bounds the leases remembered per kernelspec for its
	// demand: beyond it the oldest are forgotten early.
	maxArrivals = 4096
)

type specPool struct {
	name string
	// floor is Config.Ready: kept ready whatever the demand.
	floor int
	// target is how many kernels to keep ready now: the floor, grown
	// towards demand within the caps. demand is what the leases of the
	// demand window would have needed ready at once.
	target, demand int
	// capped names what holds target below demand ("" if nothing).
	capped   string
	ready    []*Kernel
	starting int
	// leased holds the kernels handed out and not yet ended. A set, not a
	// count: whether a kernel that ends was leased must not depend on
	// whether Lease or track saw its death first.
	leased map[*Kernel]struct{}
	// retiring holds ready kernels shut down because the pool shrank.
	retiring map[*Kernel]struct{}
	queue    fairQueue
	// arrivals are the leases asked for within the demand window, oldest
	// first; took the latest successful start durations; memory the
	// latest measured PSS of a ready kernel.
	arrivals []time.Time
	took     []time.Duration
	memory   []int64
	// started counts the successful starts, for measureEvery.
	started  int
	lastErr  error
	failures int
	retryAt  time.Time
	// holdUntil is when the refill after the latest lease may start.
	holdUntil time.Time
}

// Stats is a snapshot of one kernelspec's pool.
type Stats struct {
	Name string
	// Want is the floor (Config.Ready), kept whatever the demand.
	Want int
	// Target is the ready kernels the pool aims at now: Want, grown
	// toward Demand within MaxKernels and the memory budget. Demand is
	// what the leases of the demand window would have needed ready at
	// once.
	Target, Demand int
	Ready          int
	Starting       int
	Leased         int
	Waiting        int
	// OldestWait is how long the longest waiting lease has waited.
	// EstimatedWait is what a lease joining the back of the queue would
	// wait at least (0 with a kernel ready, or before any start was
	// timed).
	OldestWait, EstimatedWait time.Duration
	// StartTime is the median of the latest starts; KernelMemory what a
	// ready kernel is reckoned to cost (its measured PSS, or
	// DefaultKernelMemory before any is measured).
	StartTime    time.Duration
	KernelMemory int64
	LastErr      error
}

// New starts a pool and begins warming kernels at once.
func New(cfg Config) (*Pool, error) {
	d := DefaultConfig()
	// An empty Ready map is a pool that keeps no kernel ready; only nil
	// means "not said".
	if cfg.Ready == nil {
		var forks func([]string) bool
		if f, ok := cfg.Kernel.Launcher.(interface{ Forks([]string) bool }); ok {
			forks = f.Forks
		}
		orDefault(&cfg.MaxKernels, d.MaxKernels)
		cfg.Ready = fitReady(AutoReady(cfg.Specs, forks), max(1, cfg.MaxKernels/2))
	}
	orDefault(&cfg.MaxKernels, d.MaxKernels)
	orDefault(&cfg.MaxConcurrentStarts, d.MaxConcurrentStarts)
	orDefault(&cfg.MaxSockets, d.MaxSockets)
	orDefault(&cfg.DemandWindow, d.DemandWindow)
	orDefault(&cfg.RefillDelay, d.RefillDelay)
	if cfg.MemoryBudget == 0 {
		cfg.MemoryBudget = d.MemoryBudget
	}
	if cfg.Queue == "" {
		cfg.Queue = d.Queue
	}
	if _, err := ParseQueueMode(string(cfg.Queue)); err != nil {
		return nil, fmt.Errorf("kernel pool: %w", err)
	}
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
		names:  jupytermsg.SortedNames(cfg.Specs),
		specs:  map[string]*specPool{},
		starts: map[*start]struct{}{},
		runCtx: ctx, stop: stop,
	}
	for name := range cfg.Specs {
		n := cfg.Ready[name]
		p.specs[name] = &specPool{name: name, floor: n, target: n,
			leased: map[*Kernel]struct{}{}, retiring: map[*Kernel]struct{}{}}
	}
	// Registered before the first start, so every start is counted.
	p.metrics = newMetrics(cfg.Metrics, p)
	p.wg.Add(1)
	go p.tendLoop()
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
// good: the caller must Shutdown it. With no kernel ready, it waits in the
// kernelspec's queue until a kernel is ready for it or ctx ends. With the
// fair queue, a lease whose expected wait is beyond ctx's deadline is
// refused at once with a *WaitError.
func (p *Pool) Lease(ctx context.Context, req LeaseRequest) (*Kernel, error) {
	name := req.Kernel
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
	now := time.Now()
	sp.arrive(now)
	p.resizeLocked(now)
	if k := p.takeReadyLocked(sp); k != nil {
		p.mu.Unlock()
		p.metrics.waited(name, "served", 0)
		return k, nil
	}
	client := req.Client
	if p.cfg.Queue == QueueFIFO {
		client = ""
	}
	place := sp.queue.placeFor(client)
	if deadline, ok := ctx.Deadline(); ok && p.cfg.Queue == QueueFair {
		if wait, known := p.estimateLocked(sp, place, now); known && wait > deadline.Sub(now) {
			err := &WaitError{Kernel: name, Place: place, Wait: wait, Within: deadline.Sub(now), Live: p.live, MaxKernels: p.cfg.MaxKernels}
			p.fillLocked()
			p.mu.Unlock()
			p.metrics.refused(name)
			return nil, err
		}
	}
	w := &waiter{ch: make(chan *Kernel, 1), client: client, since: now}
	sp.queue.push(w)
	p.fillLocked()
	p.mu.Unlock()

	select {
	case k := <-w.ch:
		if k == nil {
			return nil, ErrPoolClosed
		}
		p.metrics.waited(name, "served", time.Since(now))
		return k, nil
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		sp.queue.remove(w)
		// A kernel may have been handed over just as the wait ended.
		select {
		case k := <-w.ch:
			if k != nil {
				p.unclaimedLocked(sp, k)
			}
		default:
		}
		p.metrics.waited(name, "gave_up", time.Since(now))
		reason := fmt.Sprintf("%s: %d of %d kernels in use", ctx.Err(), p.live, p.cfg.MaxKernels)
		if sp.lastErr != nil {
			reason += "; last start failed: " + sp.lastErr.Error()
		}
		return nil, fmt.Errorf("%w (%s): %s", ErrNoKernel, name, reason)
	}
}

// arrive counts a lease asked for at now toward the demand.
func (sp *specPool) arrive(now time.Time) {
	if len(sp.arrivals) >= maxArrivals {
		sp.arrivals = slices.Delete(sp.arrivals, 0, len(sp.arrivals)-maxArrivals+1)
	}
	sp.arrivals = append(sp.arrivals, now)
}

// startTime is the median of the latest successful starts, the pool's
// start rate for its demand; 0 before any.
func (sp *specPool) startTime() time.Duration {
	if len(sp.took) == 0 {
		return 0
	}
	sorted := slices.Clone(sp.took)
	slices.Sort(sorted)
	if n := len(sorted); n%2 == 0 {
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return sorted[len(sorted)/2]
}

// kernelMemory is what a ready kernel of this spec is reckoned to cost.
func (sp *specPool) kernelMemory() int64 {
	if len(sp.memory) == 0 {
		return DefaultKernelMemory
	}
	var sum int64
	for _, m := range sp.memory {
		sum += m
	}
	return sum / int64(len(sp.memory))
}

func keepLatest[T any](s []T, v T, n int) []T {
	if len(s) >= n {
		s = slices.Delete(s, 0, len(s)-n+1)
	}
	return append(s, v)
}

// fastestStart is the quickest of the latest successful starts; 0 before
// any.
func (sp *specPool) fastestStart() time.Duration {
	if len(sp.took) == 0 {
		return 0
	}
	return slices.Min(sp.took)
}

// estimateLocked is the wait of the place-th next lease of sp if starts
// go as fast as the quickest of the latest ones (known is false before
// any start of sp was timed). It is a lower bound on purpose: a lease
// refused on it would not have been served in time even then, while one
// admitted on a wait that turns out longer only waits out its deadline,
// as every lease did before the estimate.
func (p *Pool) estimateLocked(sp *specPool, place int, now time.Time) (wait time.Duration, known bool) {
	took := sp.fastestStart()
	if took == 0 {
		return 0, false
	}
	m := startModel{slots: p.cfg.MaxConcurrentStarts, took: took}
	for s := range p.starts {
		// A start already longer than that is expected to end now.
		left := max(s.sp.fastestStart()-now.Sub(s.began), 0)
		if s.sp == sp {
			m.mine = append(m.mine, left)
		} else {
			m.others = append(m.others, left)
		}
	}
	// Kernels already ready come first (a waiter takes them at once).
	return m.wait(place - len(sp.ready)), true
}

// resizeLocked sets each kernelspec's target from its demand: the floor,
// grown one kernel at a time in turn across kernelspecs while the memory
// budget and MaxKernels allow, and retires ready kernels beyond a target
// that fell. Kernels leased do not lower a target: while they hold room
// under MaxKernels the pool just cannot reach it (fillLocked), and a
// waiting lease takes room from another kernelspec's surplus.
func (p *Pool) resizeLocked(now time.Time) {
	if p.closed {
		return
	}
	targets := make(map[*specPool]int, len(p.specs))
	capped := map[*specPool]string{}
	var memory int64
	kernels := 0
	for _, name := range p.names {
		sp := p.specs[name]
		cut := 0
		for cut < len(sp.arrivals) && now.Sub(sp.arrivals[cut]) > p.cfg.DemandWindow {
			cut++
		}
		sp.arrivals = slices.Delete(sp.arrivals, 0, cut)
		perKernel := sp.startTime()
		if perKernel == 0 {
			perKernel = time.Second
		}
		sp.demand = demand(sp.arrivals, perKernel/time.Duration(p.cfg.MaxConcurrentStarts))
		targets[sp] = sp.floor
		memory += int64(sp.floor) * sp.kernelMemory()
		kernels += sp.floor
		if p.cfg.MemoryBudget < 0 && sp.demand > sp.floor {
			capped[sp] = "no growth"
		}
	}
	for grew := p.cfg.MemoryBudget >= 0; grew; {
		grew = false
		for _, name := range p.names {
			sp := p.specs[name]
			switch {
			case targets[sp] >= sp.demand:
			case kernels >= p.cfg.MaxKernels:
				capped[sp] = "max kernels"
			case memory+sp.kernelMemory() > p.cfg.MemoryBudget:
				capped[sp] = "memory budget"
			default:
				targets[sp]++
				memory += sp.kernelMemory()
				kernels++
				grew = true
			}
		}
	}
	for _, name := range p.names {
		sp := p.specs[name]
		to, c := targets[sp], capped[sp]
		var msg string
		switch {
		case to > sp.target:
			msg = "kernel pool grows"
		case to < sp.target:
			msg = "kernel pool shrinks"
		case c != "" && c != sp.capped:
			msg = "kernel pool held at its cap"
		}
		if msg != "" {
			ev := p.log.Info()
			if c != "" {
				ev = ev.Str("capped_by", c)
			}
			ev.Str("spec", sp.name).Int("from", sp.target).Int("to", to).Int("floor", sp.floor).Int("demand", sp.demand).
				Int64("kernel_memory_mb", sp.kernelMemory()>>20).Msg(msg)
		}
		sp.target, sp.capped = to, c
	}
	for _, sp := range p.specs {
		for sp.queue.len() == 0 && len(sp.ready) > sp.target {
			p.retireLocked(sp, sp.ready[0])
		}
	}
}

// retireLocked shuts down k, a ready kernel the pool no longer needs.
func (p *Pool) retireLocked(sp *specPool, k *Kernel) {
	i := slices.Index(sp.ready, k)
	if i < 0 {
		return
	}
	sp.ready = slices.Delete(sp.ready, i, i+1)
	sp.retiring[k] = struct{}{}
	p.shutdownLocked(k)
}

// takeReadyLocked leases the first live ready kernel, or returns nil.
// Dead ones are dropped; track frees their place. The refill is held back
// for RefillDelay while another kernel is still ready.
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
		if len(sp.ready) > 0 {
			sp.holdUntil = time.Now().Add(p.cfg.RefillDelay)
			if p.refill == nil {
				p.refill = time.AfterFunc(p.cfg.RefillDelay, p.endHold)
			} else {
				p.refill.Reset(p.cfg.RefillDelay)
			}
		} else {
			sp.holdUntil = time.Time{}
		}
		p.fillLocked()
		return k
	}
	return nil
}

// endHold starts the refills held back by takeReadyLocked.
func (p *Pool) endHold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fillLocked()
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

// fillLocked starts kernels, within the caps: first what every spec
// must have (its floor and its waiting leases), then its growth toward
// its target. A waiting lease that finds MaxKernels reached retires a
// ready kernel beyond another spec's floor to make room.
func (p *Pool) fillLocked() {
	if p.closed {
		return
	}
	now := time.Now()
	for _, growth := range []bool{false, true} {
		for progress := true; progress; {
			progress = false
			for _, name := range p.names {
				sp := p.specs[name]
				want := sp.floor
				if growth {
					want = max(sp.target, sp.floor)
				}
				need := want + sp.queue.len() - len(sp.ready) - sp.starting
				held := now.Before(sp.holdUntil) && sp.queue.len() == 0 && len(sp.ready) > 0
				if need <= 0 || now.Before(sp.retryAt) || held {
					continue
				}
				if p.starting >= p.cfg.MaxConcurrentStarts {
					return
				}
				if p.live >= p.cfg.MaxKernels {
					if !growth && sp.queue.len() > sp.starting {
						p.makeRoomLocked()
					}
					continue
				}
				p.startLocked(sp, now)
				progress = true
			}
		}
	}
}

// makeRoomLocked retires one ready kernel beyond its spec's floor, unless
// one is already on its way out.
func (p *Pool) makeRoomLocked() {
	var victim *specPool
	for _, name := range p.names {
		sp := p.specs[name]
		if len(sp.retiring) > 0 {
			return
		}
		if surplus := len(sp.ready) - sp.floor; surplus > 0 && (victim == nil || surplus > len(victim.ready)-victim.floor) {
			victim = sp
		}
	}
	if victim != nil {
		p.log.Info().Str("spec", victim.name).Msg("kernel pool retires a ready kernel to make room for a waiting lease")
		p.retireLocked(victim, victim.ready[0])
	}
}

func (p *Pool) startLocked(sp *specPool, now time.Time) {
	s := &start{sp: sp, began: now}
	p.starts[s] = struct{}{}
	sp.starting++
	p.starting++
	p.live++
	p.wg.Add(1)
	go p.startOne(s)
}

// measureNext counts a successful start of sp and says whether its kernel
// is measured.
func (p *Pool) measureNext(sp *specPool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	sp.started++
	return len(sp.memory) < recentMeasures || sp.started%measureEvery == 0
}

func (p *Pool) startOne(s *start) {
	defer p.wg.Done()
	sp := s.sp
	cfg := p.cfg.Kernel
	cfg.Spec = p.cfg.Specs[sp.name]
	k, err := StartKernel(p.runCtx, p.zctx, cfg)
	took := time.Since(s.began)
	p.metrics.started(sp.name, took, err)
	if p.cfg.OnStart != nil {
		p.cfg.OnStart(sp.name, took, err)
	}
	var pss int64
	if err == nil && p.measureNext(sp) {
		// What an idle ready kernel costs, for the memory budget.
		if pss, err = treePSS(k.Pid()); err != nil {
			p.log.Debug().Err(err).Str("kernel", k.ID).Msg("kernel memory not measured")
			pss, err = 0, nil
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.starts, s)
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
	sp.took = keepLatest(sp.took, took, recentStarts)
	if pss > 0 {
		sp.memory = keepLatest(sp.memory, pss, recentMeasures)
	}
	p.log.Debug().Str("kernel", k.ID).Str("spec", sp.name).Dur("took", took).Int64("pss_kib", pss>>10).Msg("kernel ready")
	if p.closed {
		p.live--
		p.shutdownLocked(k)
		return
	}
	p.wg.Add(1)
	go p.track(sp, k)
	p.readyLocked(sp, k)
	p.resizeLocked(time.Now())
	p.fillLocked()
}

// readyLocked hands k to the next waiter in turn, or keeps it ready.
func (p *Pool) readyLocked(sp *specPool, k *Kernel) {
	if w := sp.queue.pop(); w != nil {
		sp.leased[k] = struct{}{}
		w.ch <- k
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
	} else if _, ok := sp.retiring[k]; ok {
		delete(sp.retiring, k)
	} else {
		// In the pool, or taken out of it dead by Lease.
		if i := slices.Index(sp.ready, k); i >= 0 {
			sp.ready = slices.Delete(sp.ready, i, i+1)
		}
		if !p.closed {
			p.log.Warn().Str("kernel", k.ID).Str("spec", sp.name).Err(k.Err()).Msg("ready kernel died; replacing it")
		}
	}
	p.fillLocked()
}

// tendLoop retries failed starts once their backoff has passed, and
// resizes the pool as leases leave the demand window.
func (p *Pool) tendLoop() {
	defer p.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.runCtx.Done():
			return
		case <-t.C:
			p.mu.Lock()
			p.resizeLocked(time.Now())
			p.fillLocked()
			p.mu.Unlock()
		}
	}
}

// Stats returns a snapshot per kernelspec, sorted by name.
func (p *Pool) Stats() []Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	out := make([]Stats, 0, len(p.specs))
	for _, name := range p.names {
		sp := p.specs[name]
		st := Stats{Name: name, Want: sp.floor, Target: sp.target, Demand: sp.demand,
			Ready: len(sp.ready), Starting: sp.starting, Leased: len(sp.leased), Waiting: sp.queue.len(),
			StartTime: sp.startTime(), KernelMemory: sp.kernelMemory(), LastErr: sp.lastErr}
		if t := sp.queue.oldest(); !t.IsZero() {
			st.OldestWait = now.Sub(t)
		}
		if len(sp.ready) == 0 {
			st.EstimatedWait, _ = p.estimateLocked(sp, sp.queue.len()+1, now)
		}
		out = append(out, st)
	}
	return out
}

// Warm reports whether every spec with a ready size has a ready kernel.
func (p *Pool) Warm() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range p.specs {
		if sp.floor > 0 && len(sp.ready) == 0 {
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
	if p.refill != nil {
		p.refill.Stop()
	}
	var ready []*Kernel
	for _, sp := range p.specs {
		ready = append(ready, sp.ready...)
		for _, w := range sp.queue.drain() {
			close(w.ch)
		}
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
