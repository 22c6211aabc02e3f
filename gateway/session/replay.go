package session

import (
	"sync"

	"github.com/cellgate/cellgate/jupytermsg"
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
}

// Replay is a session's bounded history of messages for clients. It lets
// several clients read at their own pace and lets a client that reconnects
// resume after the last sequence number it saw. The kernel's reader never
// waits for clients: a client that falls behind the oldest kept message is
// told how many it missed.
type Replay struct {
	mu       sync.Mutex
	entries  []Entry // oldest first
	bytes    int
	maxMsgs  int
	maxBytes int
	next     uint64 // sequence number of the next append; starts at 1
	changed  chan struct{}
	closed   bool
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
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0
	}
	e := Entry{Seq: l.next, Channel: ch, Msg: m, To: to, size: messageSize(m)}
	l.next++
	l.entries = append(l.entries, e)
	l.bytes += e.size
	drop := 0
	for len(l.entries)-drop > 1 && (len(l.entries)-drop > l.maxMsgs || l.bytes > l.maxBytes) {
		l.bytes -= l.entries[drop].size
		l.entries[drop] = Entry{}
		drop++
	}
	if drop > 0 {
		l.entries = append(l.entries[:0:0], l.entries[drop:]...)
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return e.Seq
}

// Since returns the messages after seq that client may see, how many it
// missed because they were already dropped, a channel that is closed on
// the next append, and whether the log is closed.
func (l *Replay) Since(seq uint64, client string, limit int) (msgs []Entry, missed uint64, changed <-chan struct{}, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	start := 0
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

// close wakes all readers for good.
func (l *Replay) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.changed)
	}
}

// Held reports how many messages, and how many bytes of them, are kept.
func (l *Replay) Held() (msgs, bytes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries), l.bytes
}
