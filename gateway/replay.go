package gateway

import (
	"sync"

	"github.com/cellgate/cellgate/jupytermsg"
)

// outgoing is one message from the kernel with its session sequence number.
// to is the client session a reply is addressed to; "" means everyone
// (iopub).
type outgoing struct {
	seq     uint64
	channel jupytermsg.Channel
	msg     *jupytermsg.Message
	to      string
	size    int
}

// replayLog is a session's bounded history of outgoing messages. It lets
// several clients read at their own pace and lets a client that reconnects
// resume after the last sequence number it saw. The kernel's reader never
// waits for clients: a client that falls behind the oldest kept message is
// told how many it missed.
type replayLog struct {
	mu       sync.Mutex
	entries  []outgoing // oldest first
	bytes    int
	maxMsgs  int
	maxBytes int
	next     uint64 // sequence number of the next append; starts at 1
	changed  chan struct{}
	closed   bool
}

func newReplayLog(maxMsgs, maxBytes int) *replayLog {
	return &replayLog{maxMsgs: maxMsgs, maxBytes: maxBytes, next: 1, changed: make(chan struct{})}
}

func messageSize(m *jupytermsg.Message) int {
	n := len(m.RawHeader) + len(m.ParentHeader) + len(m.Metadata) + len(m.Content)
	for _, b := range m.Buffers {
		n += len(b)
	}
	return n
}

// append adds a message and wakes every waiting reader.
func (l *replayLog) append(ch jupytermsg.Channel, m *jupytermsg.Message, to string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0
	}
	e := outgoing{seq: l.next, channel: ch, msg: m, to: to, size: messageSize(m)}
	l.next++
	l.entries = append(l.entries, e)
	l.bytes += e.size
	drop := 0
	for len(l.entries)-drop > 1 && (len(l.entries)-drop > l.maxMsgs || l.bytes > l.maxBytes) {
		l.bytes -= l.entries[drop].size
		l.entries[drop] = outgoing{}
		drop++
	}
	if drop > 0 {
		l.entries = append(l.entries[:0:0], l.entries[drop:]...)
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return e.seq
}

// since returns the messages after seq that client may see, how many it
// missed because they were already dropped, a channel that is closed on
// the next append, and whether the log is closed.
func (l *replayLog) since(seq uint64, client string, limit int) (msgs []outgoing, missed uint64, changed <-chan struct{}, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	start := 0
	if len(l.entries) > 0 {
		// Written so that no seq, however large, overflows.
		first := l.entries[0].seq
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
		if e.to != "" && e.to != client {
			continue
		}
		msgs = append(msgs, e)
		if limit > 0 && len(msgs) >= limit {
			break
		}
	}
	return msgs, missed, l.changed, l.closed
}

// last returns the newest sequence number handed out.
func (l *replayLog) last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next - 1
}

// close wakes all readers for good.
func (l *replayLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.changed)
	}
}
