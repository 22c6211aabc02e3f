package session

import (
	"sync"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// Entry is one message for clients with its session sequence number.
type Entry struct {
	Seq     uint64
	Channel jupytermsg.Channel
	Msg     *jupytermsg.Message
	// To is the client a reply is addressed to; "" means every client
	// (iopub).
	To   string
	size int
	// charge is the kernel message budget's charge for Msg, released
	// when the entry leaves the replay (nil: not charged).
	charge *kernelpool.Charge
}

// Size is the bytes of the entry's message.
func (e Entry) Size() int { return e.size }

// Charge is the budget's charge for the entry's message while the replay
// holds it (nil if none): a reader Shares it to hold the message too.
func (e Entry) Charge() *kernelpool.Charge { return e.charge }

// Replay is a session's bounded history of messages for clients. It lets
// several clients read at their own pace and lets a client that reconnects
// resume after the last sequence number it saw. The kernel's reader never
// waits for clients: a client that falls behind the oldest kept message is
// told how many it missed.
//
// The replay is where a session holds its kernel's messages: each entry
// keeps the message's charge against the process's kernel message budget
// until the entry is dropped (by the bounds, when the budget asks for room,
// or when the replay closes). A transport that takes entries to write
// them to a client Shares their charges (Entry.Charge), so a message stays
// charged while the transport holds it after the replay let it go.
type Replay struct {
	mu       sync.Mutex
	entries  []Entry // oldest first
	bytes    int
	maxMsgs  int
	maxBytes int
	next     uint64 // sequence number of the next append; starts at 1
	changed  chan struct{}
	closed   bool
	// unregister takes the replay off the budget's reclaimers; set by the
	// first charged append.
	unregister func()
}

func newReplay(maxMsgs, maxBytes int) *Replay {
	return &Replay{maxMsgs: maxMsgs, maxBytes: maxBytes, next: 1, changed: make(chan struct{})}
}

func messageSize(m *jupytermsg.Message) int {
	n := len(m.RawHeader) + len(m.ParentHeader) + len(m.Metadata) + len(m.Content)
	for _, b := range m.Buffers {
		n += len(b)
	}
	return n
}

// Append adds a message and wakes every waiting reader.
func (l *Replay) Append(ch jupytermsg.Channel, m *jupytermsg.Message, to string) uint64 {
	return l.AppendCharged(ch, m, to, nil)
}

// AppendCharged adds a kernel's message with its budget charge, which the
// replay now owns (released at once if the replay is closed).
func (l *Replay) AppendCharged(ch jupytermsg.Channel, m *jupytermsg.Message, to string, charge *kernelpool.Charge) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		charge.Release()
		return 0
	}
	if charge != nil && l.unregister == nil {
		l.unregister = charge.Budget().AddReclaimer(l)
	}
	e := Entry{Seq: l.next, Channel: ch, Msg: m, To: to, size: messageSize(m), charge: charge}
	l.next++
	l.entries = append(l.entries, e)
	l.bytes += e.size
	drop := 0
	for len(l.entries)-drop > 1 && (len(l.entries)-drop > l.maxMsgs || l.bytes > l.maxBytes) {
		drop++
	}
	l.dropOldestLocked(drop)
	close(l.changed)
	l.changed = make(chan struct{})
	return e.Seq
}

// dropOldestLocked lets the n oldest entries go, releasing their charges.
func (l *Replay) dropOldestLocked(n int) {
	if n <= 0 {
		return
	}
	for i := range n {
		l.bytes -= l.entries[i].size
		l.entries[i].charge.Release()
		l.entries[i] = Entry{}
	}
	l.entries = append(l.entries[:0:0], l.entries[n:]...)
}

// Reclaimable is the charged bytes the budget could have back: all but
// the newest entry, which the replay keeps so a reader can tell what it
// missed.
func (l *Replay) Reclaimable() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0 // its charges are released; what it keeps is its readers' last
	}
	var n int64
	for i := 0; i < len(l.entries)-1; i++ {
		n += l.entries[i].charge.Bytes()
	}
	return n
}

// Reclaim drops the oldest entries until about need charged bytes are
// released, keeping the newest. Readers behind them are told what they
// missed, as when the replay's own bounds drop them.
func (l *Replay) Reclaim(need int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	drop := 0
	for ; drop < len(l.entries)-1 && need > 0; drop++ {
		need -= l.entries[drop].charge.Bytes()
	}
	l.dropOldestLocked(drop)
}

// Since returns the messages after seq that client may see, how many it
// missed because they were already dropped, a channel that is closed on
// the next append, and whether the log is closed.
func (l *Replay) Since(seq uint64, client string, limit int) (msgs []Entry, missed uint64, changed <-chan struct{}, closed bool) {
	return l.SinceWithin(seq, client, limit, 0)
}

// SinceWithin is Since with the messages' bytes bounded too: it stops
// before the message that would take them over maxBytes (0: no bound),
// but always returns a first message, however large.
func (l *Replay) SinceWithin(seq uint64, client string, limit, maxBytes int) (msgs []Entry, missed uint64, changed <-chan struct{}, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	start, bytes := 0, 0
	if len(l.entries) > 0 {
		// Written so that no seq, however large, overflows.
		first := l.entries[0].Seq
		switch {
		case seq < first-1:
			missed = first - 1 - seq
		case seq-first+1 >= uint64(len(l.entries)):
			start = len(l.entries)
		default:
			start = int(seq - first + 1)
		}
	}
	for _, e := range l.entries[start:] {
		if e.To != "" && e.To != client {
			continue
		}
		if maxBytes > 0 && len(msgs) > 0 && bytes+e.size > maxBytes {
			break
		}
		bytes += e.size
		msgs = append(msgs, e)
		if limit > 0 && len(msgs) >= limit {
			break
		}
	}
	return msgs, missed, l.changed, l.closed
}

// Last returns the newest sequence number handed out.
func (l *Replay) Last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next - 1
}

// close wakes all readers for good and gives back the budget's charges:
// the session is over, and its readers only finish the message in hand.
func (l *Replay) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.changed)
	for i := range l.entries {
		l.entries[i].charge.Release()
		l.entries[i].charge = nil
	}
	if l.unregister != nil {
		l.unregister()
	}
}

// Held reports how many messages, and how many bytes of them, are kept.
func (l *Replay) Held() (msgs, bytes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries), l.bytes
}
