package session

import (
	"testing"

	"github.com/cellgate/cellgate/jupytermsg"
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
