package permalink

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
)

// teller keeps what it is told.
type teller struct {
	mu    sync.Mutex
	heard []string
}

func (t *teller) Notice(_ []byte, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.heard = append(t.heard, text)
}

func (t *teller) said() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.heard...)
}

// A drop reaches the session that was told the id, and only while it
// lives; the ledger holds a bounded number of ids per session.
func TestLedgerTellsWhoWasToldOfADrop(t *testing.T) {
	l := NewLedger(zerolog.Nop())
	a, b := &teller{}, &teller{}
	l.remember("p1", a)
	l.remember("p2", b)
	l.Dropped("p1", errors.New("disk full"))
	if got := a.said(); len(got) != 1 || !strings.Contains(got[0], "p1") || !strings.Contains(got[0], "disk full") {
		t.Errorf("a heard %q", got)
	}
	if got := b.said(); len(got) != 0 {
		t.Errorf("b heard of a's permalink: %q", got)
	}
	l.Forget(b)
	l.Dropped("p2", errors.New("gone"))
	if got := b.said(); len(got) != 0 {
		t.Errorf("an ended session was told: %q", got)
	}
	l.Dropped("never-issued", errors.New("x"))
	for i := range maxToldPerTeller + 10 {
		l.remember(string(rune('a'+i%26))+strings.Repeat("x", i), a)
	}
	if n := len(l.byTeller[a]); n != maxToldPerTeller {
		t.Errorf("ledger holds %d ids for one session, cap %d", n, maxToldPerTeller)
	}
}

func TestAnnotateAndFromReply(t *testing.T) {
	m := &jupytermsg.Message{Metadata: []byte(`{"started":"x"}`)}
	out := Annotate(m, "abc")
	if got := FromReply(out); got != "abc" {
		t.Errorf("FromReply(Annotate(abc)) = %q (metadata %s)", got, out.Metadata)
	}
	if !strings.Contains(string(out.Metadata), `"started"`) {
		t.Errorf("Annotate dropped the kernel's metadata: %s", out.Metadata)
	}
	if string(m.Metadata) != `{"started":"x"}` {
		t.Error("Annotate changed the kernel's message in place")
	}
	if Annotate(m, "") != m || FromReply(m) != "" {
		t.Error("an empty id must leave the reply as it is")
	}
}

// A nil Pending is an execution that is not recorded: it is over at once.
func TestNilPendingIsRecorded(t *testing.T) {
	var p *Pending
	if id, ok := p.Recorded(); !ok || id != "" {
		t.Errorf("nil Pending: %q %v", id, ok)
	}
	if p.Wait(0) != "" {
		t.Error("nil Pending waited for an id")
	}
}
