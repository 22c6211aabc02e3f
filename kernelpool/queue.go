package kernelpool

import (
	"container/heap"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// QueueMode is how leases wait when no kernel is ready.
type QueueMode string

const (
	// QueueFair serves waiters round-robin across clients, first come
	// first served within one, and refuses at once a lease whose expected
	// wait exceeds its deadline.
	QueueFair QueueMode = "fair"
	// QueueFIFO is one first-come-first-served line for everyone, each
	// waiting until its deadline: cellgate's behaviour before the fair
	// queue, kept for comparison.
	QueueFIFO QueueMode = "fifo"
)

// ParseQueueMode reads a QueueMode by name.
func ParseQueueMode(s string) (QueueMode, error) {
	switch m := QueueMode(s); m {
	case QueueFair, QueueFIFO:
		return m, nil
	}
	return "", fmt.Errorf("unknown lease queue %q (want %q or %q)", s, QueueFair, QueueFIFO)
}

// ErrWaitTooLong is wrapped by the error of a lease refused at once: the
// queue ahead of it would not be served before its deadline.
var ErrWaitTooLong = errors.New("expected wait for a kernel exceeds the deadline")

// WaitError is a lease refused at once because of its expected wait (a
// lower bound: the wait if starts go as fast as the quickest of the latest
// ones). It wraps ErrNoKernel and ErrWaitTooLong.
type WaitError struct {
	Kernel string
	// Place is where the lease would have stood in the queue (1: next).
	Place int
	// Wait is the expected wait at that place; Within is what was left
	// of the caller's deadline.
	Wait, Within time.Duration
	// Live and MaxKernels are the pool's kernels then, and its cap.
	Live, MaxKernels int
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("%s (%s): %d leases ahead, expected wait %s is over the %s allowed; %d of %d kernels in use",
		ErrNoKernel, e.Kernel, e.Place-1, e.Wait.Round(10*time.Millisecond), e.Within.Round(10*time.Millisecond), e.Live, e.MaxKernels)
}

func (e *WaitError) Unwrap() []error { return []error{ErrNoKernel, ErrWaitTooLong} }

// waiter is one Lease waiting for a kernel.
type waiter struct {
	ch     chan *Kernel // buffered: a hand-over never blocks the pool
	client string
	since  time.Time
}

// fairQueue holds a kernelspec's waiters: round-robin across clients,
// first come first served within one client.
type fairQueue struct {
	byClient map[string][]*waiter
	// turns lists the clients with waiters, the next to be served first;
	// a client served goes to the back if it still waits.
	turns []string
	n     int
}

func (q *fairQueue) len() int { return q.n }

func (q *fairQueue) push(w *waiter) {
	if q.byClient == nil {
		q.byClient = map[string][]*waiter{}
	}
	if len(q.byClient[w.client]) == 0 {
		q.turns = append(q.turns, w.client)
	}
	q.byClient[w.client] = append(q.byClient[w.client], w)
	q.n++
}

// pop takes the next waiter in turn, or nil.
func (q *fairQueue) pop() *waiter {
	if q.n == 0 {
		return nil
	}
	c := q.turns[0]
	ws := q.byClient[c]
	w := ws[0]
	ws[0] = nil
	q.turns = q.turns[1:]
	if rest := ws[1:]; len(rest) > 0 {
		q.byClient[c] = rest
		q.turns = append(q.turns, c)
	} else {
		delete(q.byClient, c)
	}
	q.n--
	return w
}

// remove takes w out of the queue (it gave up); false if it is not there.
func (q *fairQueue) remove(w *waiter) bool {
	ws := q.byClient[w.client]
	i := slices.Index(ws, w)
	if i < 0 {
		return false
	}
	ws = slices.Delete(ws, i, i+1)
	q.n--
	if len(ws) > 0 {
		q.byClient[w.client] = ws
		return true
	}
	delete(q.byClient, w.client)
	q.turns = slices.DeleteFunc(q.turns, func(c string) bool { return c == w.client })
	return true
}

// drain empties the queue, returning its waiters.
func (q *fairQueue) drain() []*waiter {
	var all []*waiter
	for _, ws := range q.byClient {
		all = append(all, ws...)
	}
	*q = fairQueue{}
	return all
}

// oldest is when the longest-waiting waiter came; zero with none.
func (q *fairQueue) oldest() time.Time {
	var t time.Time
	for _, ws := range q.byClient {
		if s := ws[0].since; t.IsZero() || s.Before(t) {
			t = s
		}
	}
	return t
}

// placeFor is the place (1: next) that a new waiter of client would take,
// if nobody else came. Its client's waiters are served one per round; in
// each round the clients ahead of it in turn come first.
func (q *fairQueue) placeFor(client string) int {
	mine := len(q.byClient[client]) // the new waiter is served in round `mine`
	turn := slices.Index(q.turns, client)
	if turn < 0 {
		turn = len(q.turns)
	}
	place := mine + 1
	for i, c := range q.turns {
		if c == client {
			continue
		}
		n := len(q.byClient[c])
		place += min(n, mine)
		if i < turn && n > mine {
			place++
		}
	}
	return place
}

// startModel is what the pool knows of kernel starts when it estimates a
// wait: how long a start of this kernelspec took lately, how many may run
// at once, and how long the starts in flight have left to run.
type startModel struct {
	slots int
	took  time.Duration
	// mine are the remaining times of this kernelspec's starts in flight,
	// others those of other kernelspecs' (they hold start slots too).
	mine, others []time.Duration
}

// wait estimates when the place-th next kernel of this kernelspec is
// ready: the starts in flight finish, then each free start slot makes one
// kernel per took. Kernels that end and free room under MaxKernels are
// not foreseen: at the cap, the estimate is a lower bound.
func (m startModel) wait(place int) time.Duration {
	if place <= 0 {
		return 0
	}
	arrivals := slices.Clone(m.mine)
	slices.Sort(arrivals)
	if place <= len(arrivals) {
		return arrivals[place-1]
	}
	free := &durationHeap{}
	for _, d := range append(slices.Clone(m.mine), m.others...) {
		heap.Push(free, d)
	}
	for free.Len() < max(m.slots, 1) {
		heap.Push(free, time.Duration(0))
	}
	for range place - len(m.mine) {
		done := heap.Pop(free).(time.Duration) + m.took
		heap.Push(free, done)
		arrivals = append(arrivals, done)
	}
	slices.Sort(arrivals)
	return arrivals[place-1]
}

type durationHeap []time.Duration

func (h durationHeap) Len() int           { return len(h) }
func (h durationHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h durationHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *durationHeap) Push(x any)        { *h = append(*h, x.(time.Duration)) }
func (h *durationHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// demand is how many kernels would have had to be ready to serve at once
// every lease in arrivals (oldest first), given that the pool makes one
// kernel per perKernel: the largest backlog of a queue whose server works
// at the pool's start rate.
func demand(arrivals []time.Time, perKernel time.Duration) int {
	var backlog float64
	most := 0
	for i, t := range arrivals {
		if i > 0 && perKernel > 0 {
			backlog = max(0, backlog-float64(t.Sub(arrivals[i-1]))/float64(perKernel))
		}
		backlog++
		most = max(most, int(math.Ceil(backlog-1e-9)))
	}
	return most
}
