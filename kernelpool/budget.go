package kernelpool

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// MessageBudget bounds the bytes of kernel messages the whole process
// holds at once, across all kernels: one is made per process and handed to
// every kernel (KernelConfig.MessageBudget). A kernel's receiving loop
// charges each message it decodes before handing it on (Received.Charge);
// whoever holds the message last releases the charge: the consumer of
// Messages, the session's replay when it lets the message go, or a
// transport writing it to a client (which Shares the replay's charge, and
// Holds charges of its own for the frames it encodes).
//
// When a charge does not fit, the budget first asks its reclaimers (the
// sessions' replays, largest first) to let go of old history, which costs
// a client that fell behind some output it would have been replayed; only
// what cannot be reclaimed (the newest message of each replay, messages on
// their way) makes a kernel's new iopub messages be dropped, as a ZMQ PUB
// socket drops for a slow subscriber. Replies on shell, control and stdin
// are never dropped for the budget: their loop waits for room, and the
// kernel's sends queue in its own process meanwhile.
//
// A zero limit charges and counts without ever refusing: the bytes in use
// are still measured. A nil *MessageBudget charges nothing.
type MessageBudget struct {
	limit int64

	mu    sync.Mutex
	inUse int64
	peak  int64
	// freed is closed (and replaced) whenever bytes are released, for the
	// loops that wait for room.
	freed chan struct{}
	// freedWatched says a waiter holds freed: a release replaces it only
	// then (releases are per message and client; waits are rare).
	freedWatched bool
	reclaimers   map[*reclaimerEntry]struct{}

	dropped  atomic.Int64
	refused  atomic.Int64
	waited   atomic.Int64
	reclaims atomic.Int64
	skipped  atomic.Int64
	// doubleReleases counts charges released more than once: a bug.
	doubleReleases atomic.Int64
}

// Reclaimer holds charged messages it can let go of when the budget needs
// room: a session's replay of old output.
type Reclaimer interface {
	// Reclaimable is how many bytes Reclaim could release now.
	Reclaimable() int64
	// Reclaim lets go of the oldest messages it may until about need
	// bytes are released.
	Reclaim(need int64)
}

type reclaimerEntry struct{ r Reclaimer }

// DefaultMessageBudgetBytes is the process's default kernel message
// budget: 32 messages at DefaultMaxMessageBytes, far more than the output
// sessions show at once, and a small share of a server's memory.
const DefaultMessageBudgetBytes = 256 << 20

// NewMessageBudget makes a budget of limit bytes; 0 means no limit (the
// bytes are still counted).
func NewMessageBudget(limit int64) *MessageBudget {
	return &MessageBudget{limit: max(limit, 0), freed: make(chan struct{}), reclaimers: map[*reclaimerEntry]struct{}{}}
}

// Limit is the budget in bytes (0: none).
func (b *MessageBudget) Limit() int64 {
	if b == nil {
		return 0
	}
	return b.limit
}

// BudgetStats is what a budget has seen.
type BudgetStats struct {
	// InUse is the bytes charged and not yet released; Peak the most at
	// any time.
	InUse, Peak int64
	// Dropped counts iopub messages dropped because the budget was full;
	// Refused messages over the per-message cap; Waited replies that had
	// to wait for room; Reclaims the times history was let go of for room;
	// Skipped messages a transport did not write to one client because
	// the budget had no room for it to hold them (Hold).
	Dropped, Refused, Waited, Reclaims, Skipped int64
	// DoubleReleases counts charges released twice (a bug; always 0).
	DoubleReleases int64
}

// Stats reports the budget's use.
func (b *MessageBudget) Stats() BudgetStats {
	if b == nil {
		return BudgetStats{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return BudgetStats{InUse: b.inUse, Peak: b.peak, Dropped: b.dropped.Load(), Refused: b.refused.Load(), Waited: b.waited.Load(), Reclaims: b.reclaims.Load(), Skipped: b.skipped.Load(), DoubleReleases: b.doubleReleases.Load()}
}

// ResetPeak starts the peak again from what is in use now.
func (b *MessageBudget) ResetPeak() {
	b.mu.Lock()
	b.peak = b.inUse
	b.mu.Unlock()
}

// AddReclaimer lets the budget ask r for room; remove undoes it. The
// budget never calls r while holding its own lock, so r may release
// charges from within Reclaim.
func (b *MessageBudget) AddReclaimer(r Reclaimer) (remove func()) {
	e := &reclaimerEntry{r}
	b.mu.Lock()
	b.reclaimers[e] = struct{}{}
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.reclaimers, e)
		b.mu.Unlock()
	}
}

// Charge is what one held message takes of a budget. Release gives it
// back; a nil *Charge (no budget) does nothing. Several may hold one
// message (a session's replay and the transports writing it to clients):
// each holder but the first Shares the charge, and the bytes go back when
// the last holder releases it.
type Charge struct {
	budget *MessageBudget
	bytes  int64
	// holders is how many hold the charge; 0 once released, below 0
	// after a release too many.
	holders atomic.Int64
}

// Share makes the caller another holder of the charge, which it must
// Release; false if the charge is already released (or nil): the message
// is no longer charged, and the caller must charge it anew to hold it.
func (c *Charge) Share() bool {
	if c == nil {
		return false
	}
	for {
		n := c.holders.Load()
		if n <= 0 {
			return false
		}
		if c.holders.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Bytes is the size charged.
func (c *Charge) Bytes() int64 {
	if c == nil {
		return 0
	}
	return c.bytes
}

// Budget is the budget charged.
func (c *Charge) Budget() *MessageBudget {
	if c == nil {
		return nil
	}
	return c.budget
}

// Release gives the bytes back once every holder has released the
// charge. A Release more than the charge has holders gives nothing back
// (it would be bytes another message holds); it is counted in
// DoubleReleases, which tests require to stay zero.
func (c *Charge) Release() {
	if c == nil {
		return
	}
	b := c.budget
	switch n := c.holders.Add(-1); {
	case n < 0:
		b.doubleReleases.Add(1)
		return
	case n > 0:
		return
	}
	b.mu.Lock()
	b.inUse -= c.bytes
	if b.freedWatched {
		close(b.freed)
		b.freed = make(chan struct{})
		b.freedWatched = false
	}
	b.mu.Unlock()
}

// take charges n if it fits now.
func (b *MessageBudget) take(n int64) (*Charge, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.limit > 0 && b.inUse+n > b.limit {
		return nil, false
	}
	b.inUse += n
	b.peak = max(b.peak, b.inUse)
	c := &Charge{budget: b, bytes: n}
	c.holders.Store(1)
	return c, true
}

// TryCharge charges n bytes if they fit, after asking the reclaimers for
// room if need be; false means they do not.
func (b *MessageBudget) TryCharge(n int64) (*Charge, bool) {
	if c, ok := b.take(n); ok {
		return c, true
	}
	if n > b.limit {
		return nil, false
	}
	b.reclaim(n)
	return b.take(n)
}

// reclaim asks the reclaimers, those holding the most first, for room
// for n more bytes.
func (b *MessageBudget) reclaim(n int64) {
	b.mu.Lock()
	need := b.inUse + n - b.limit
	entries := make([]*reclaimerEntry, 0, len(b.reclaimers))
	for e := range b.reclaimers {
		entries = append(entries, e)
	}
	b.mu.Unlock()
	if need <= 0 {
		return
	}
	type candidate struct {
		r     Reclaimer
		bytes int64
	}
	candidates := make([]candidate, 0, len(entries))
	for _, e := range entries {
		if n := e.r.Reclaimable(); n > 0 {
			candidates = append(candidates, candidate{e.r, n})
		}
	}
	slices.SortFunc(candidates, func(x, y candidate) int { return cmp.Compare(y.bytes, x.bytes) })
	for _, c := range candidates {
		if need <= 0 {
			break
		}
		b.reclaims.Add(1)
		c.r.Reclaim(need)
		need -= c.bytes
	}
}

// ErrOverBudget is Wait's error for a message larger than the whole budget.
var ErrOverBudget = errors.New("message larger than the kernel message budget")

// Wait charges n bytes, waiting for room as long as it takes, or until
// one of stop closes (then nil, nil).
func (b *MessageBudget) Wait(n int64, stop ...<-chan struct{}) (*Charge, error) {
	if b.limit > 0 && n > b.limit {
		return nil, fmt.Errorf("%w: %d bytes, the budget is %d", ErrOverBudget, n, b.limit)
	}
	counted := false
	for {
		b.mu.Lock()
		freed := b.freed
		b.freedWatched = true
		b.mu.Unlock()
		if c, ok := b.TryCharge(n); ok {
			return c, nil
		}
		if !counted {
			b.waited.Add(1)
			counted = true
		}
		// freed was read before trying: a release in between closed it.
		switch len(stop) {
		case 0:
			<-freed
		case 1:
			select {
			case <-freed:
			case <-stop[0]:
				return nil, nil
			}
		default:
			select {
			case <-freed:
			case <-stop[0]:
				return nil, nil
			case <-stop[1]:
				return nil, nil
			}
		}
	}
}

func (b *MessageBudget) countDrop() {
	if b != nil {
		b.dropped.Add(1)
	}
}

func (b *MessageBudget) countRefusal() {
	if b != nil {
		b.refused.Add(1)
	}
}

var (
	budgetBytesDesc = prometheus.NewDesc("cellgate_kernel_message_bytes",
		"Bytes of kernel messages the process holds (in_use: charged against --kernel-message-budget-mb now; peak: the most since start; limit: the budget, 0 for none).",
		[]string{"state"}, nil)
	budgetMessagesDesc = prometheus.NewDesc("cellgate_kernel_messages_refused_total",
		"Kernel messages the process did not take: dropped (iopub, with the budget full), oversized (over --max-message-mb; a single frame over it makes libzmq drop the connection uncounted), waited (replies that waited for room, not dropped), skipped (not written to one client: no room to hold it for that client's transport).",
		[]string{"reason"}, nil)
	budgetReclaimsDesc = prometheus.NewDesc("cellgate_kernel_message_reclaims_total",
		"Times sessions' replays let old output go to make room in the kernel message budget.", nil, nil)
)

// Describe and Collect make the budget a prometheus.Collector, read at
// scrape time.
func (b *MessageBudget) Describe(ch chan<- *prometheus.Desc) {
	ch <- budgetBytesDesc
	ch <- budgetMessagesDesc
	ch <- budgetReclaimsDesc
}

// Collect reports the budget's use.
func (b *MessageBudget) Collect(ch chan<- prometheus.Metric) {
	st := b.Stats()
	for state, v := range map[string]int64{"in_use": st.InUse, "peak": st.Peak, "limit": b.Limit()} {
		ch <- prometheus.MustNewConstMetric(budgetBytesDesc, prometheus.GaugeValue, float64(v), state)
	}
	for reason, v := range map[string]int64{"dropped": st.Dropped, "oversized": st.Refused, "waited": st.Waited, "skipped": st.Skipped} {
		ch <- prometheus.MustNewConstMetric(budgetMessagesDesc, prometheus.CounterValue, float64(v), reason)
	}
	ch <- prometheus.MustNewConstMetric(budgetReclaimsDesc, prometheus.CounterValue, float64(st.Reclaims))
}

// MessageBudget is the budget k's messages are charged to (nil: none), for
// whoever holds them after the session: the transports writing them to
// clients.
func (k *Kernel) MessageBudget() *MessageBudget {
	if k == nil {
		return nil
	}
	return k.cfg.MessageBudget
}

// Hold charges n bytes a transport is about to hold for one client (a
// batch taken from a replay, a frame it encoded) if they fit, after asking
// the reclaimers for room; false means they do not, and the transport
// skips the message for that client, telling it (counted in Skipped). It
// never waits: a client's writer must not hold up the kernel's other
// clients. A nil budget holds without charging.
func (b *MessageBudget) Hold(n int64) (*Charge, bool) {
	if b == nil {
		return nil, true
	}
	c, ok := b.TryCharge(n)
	if !ok {
		b.skipped.Add(1)
	}
	return c, ok
}
