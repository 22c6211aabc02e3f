package session

import (
	"strings"
	"testing"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

func TestReplaySinceNeverOverflows(t *testing.T) {
	l := newReplay(3, 1<<20)
	for range 5 {
		m, err := jupytermsg.New("stream", "k", nil, jupytermsg.Stream{Name: "stdout", Text: "x"})
		if err != nil {
			t.Fatal(err)
		}
		l.Append("iopub", m, "")
	}
	for _, seq := range []uint64{0, 1, 2, 3, 4, 5, 6, 1 << 63, 1<<64 - 1} {
		msgs, missed, _, _ := l.Since(seq, "", 0)
		wantMsgs := 0
		if seq < 5 {
			wantMsgs = min(3, int(5-seq))
		}
		wantMissed := uint64(0)
		if seq < 2 {
			wantMissed = 2 - seq
		}
		if len(msgs) != wantMsgs || missed != wantMissed {
			t.Errorf("since(%d): %d messages, %d missed; want %d, %d", seq, len(msgs), missed, wantMsgs, wantMissed)
		}
	}
}

// chargedMessage makes a stream message of size bytes and charges it.
func chargedMessage(t *testing.T, b *kernelpool.MessageBudget, size int) (*jupytermsg.Message, *kernelpool.Charge) {
	t.Helper()
	m, err := jupytermsg.New("stream", "k", nil, jupytermsg.Stream{Name: "stdout", Text: strings.Repeat("x", size)})
	if err != nil {
		t.Fatal(err)
	}
	c, ok := b.TryCharge(int64(size))
	if !ok {
		t.Fatalf("%d bytes refused: %+v", size, b.Stats())
	}
	return m, c
}

// The replay gives back a message's charge exactly when it lets the
// message go: trimmed by its bounds, reclaimed by the budget (never the
// newest), at close, or at once when appended after it.
func TestReplayReleasesChargesWhenItLetsGo(t *testing.T) {
	const size = 1000
	b := kernelpool.NewMessageBudget(10 * size)
	l := newReplay(4, 1<<20)
	inUse := func() int64 { return b.Stats().InUse }
	for range 6 {
		m, c := chargedMessage(t, b, size)
		l.AppendCharged("iopub", m, "", c)
	}
	if inUse() != 4*size {
		t.Fatalf("replay of 4 messages after 6: %d bytes charged, want %d", inUse(), 4*size)
	}
	// Uncharged messages (the gateway's own) are kept, and cost nothing.
	notice, _ := jupytermsg.New("stream", "k", nil, NoticeStream("hello"))
	l.Append("iopub", notice, "")
	if inUse() != 3*size {
		t.Fatalf("after an uncharged append trimmed one: %d charged, want %d", inUse(), 3*size)
	}
	// The budget, full, takes room from the replay: oldest first.
	var held []*kernelpool.Charge
	for range 7 {
		_, c := chargedMessage(t, b, size)
		held = append(held, c)
	}
	if _, c := chargedMessage(t, b, 2*size); c == nil {
		t.Fatal("no room reclaimed")
	}
	msgs, missed, _, _ := l.Since(0, "", 0)
	if len(msgs) != 2 || missed != 5 {
		t.Fatalf("after reclaiming 2 messages: %d kept, %d missed; want 2 (one charged, the notice), 5", len(msgs), missed)
	}
	if l.Reclaimable() != size {
		t.Fatalf("reclaimable %d, want %d: all but the newest", l.Reclaimable(), size)
	}
	l.Reclaim(100 * size)
	if msgs, _, _, _ := l.Since(0, "", 0); len(msgs) != 1 || msgs[0].Msg != notice {
		t.Fatalf("reclaiming everything kept %d messages; want the newest alone", len(msgs))
	}
	for _, c := range held {
		c.Release()
	}
	m, c := chargedMessage(t, b, size)
	l.AppendCharged("iopub", m, "", c)
	l.close()
	m, c = chargedMessage(t, b, size)
	if seq := l.AppendCharged("iopub", m, "", c); seq != 0 {
		t.Fatalf("appended after close: %d", seq)
	}
	// The charge of the reclaiming TryCharge above is still held.
	if st := b.Stats(); st.InUse != 2*size || st.DoubleReleases != 0 {
		t.Fatalf("after close: %+v; want only the %d bytes charged outside the replay", st, 2*size)
	}
}

// SinceWithin stops before the message that would take the batch over its
// bytes, but always gives a first message, however large.
func TestReplaySinceWithinBoundsBytes(t *testing.T) {
	l := newReplay(100, 1<<30)
	var size int
	for _, n := range []int{1000, 1000, 1000, 5000} {
		m, err := jupytermsg.New("stream", "k", nil, jupytermsg.Stream{Name: "stdout", Text: strings.Repeat("x", n)})
		if err != nil {
			t.Fatal(err)
		}
		l.Append("iopub", m, "")
		size = messageSize(m) // of the last, the largest
	}
	first, _, _, _ := l.Since(0, "", 1)
	one := first[0].Size()
	for _, tc := range []struct {
		since    uint64
		maxBytes int
		want     int
	}{
		{0, 0, 4},            // no bound
		{0, 2*one + 1, 2},    // the third would go over
		{0, 3 * one, 3},      // exactly three
		{0, one - 1, 1},      // one at least
		{3, size - 1, 1},     // one at least, the largest
		{0, 3*one + size, 4}, // all
	} {
		msgs, _, _, _ := l.SinceWithin(tc.since, "", 0, tc.maxBytes)
		if len(msgs) != tc.want {
			t.Errorf("SinceWithin(%d, %d bytes): %d messages, want %d", tc.since, tc.maxBytes, len(msgs), tc.want)
		}
	}
	if msgs, _, _, _ := l.SinceWithin(0, "", 2, 1<<20); len(msgs) != 2 {
		t.Errorf("SinceWithin with a limit of 2 messages gave %d", len(msgs))
	}
}
