package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// crashQueue stops q as a SIGKILL would: workers stop where they are, nothing is drained or
// reported, and the journal's file and lock are released as the process's exit would release
// them.
func crashQueue(t *testing.T, q *Queue) {
	t.Helper()
	q.cancel()
	q.workers.Wait()
	if q.journal != nil {
		must(t, q.journal.close())
	}
}

// restartEmbedded starts the embedded database again on dir (after Close), at the same address.
func restartEmbedded(t *testing.T, dir string) {
	t.Helper()
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
}

// unreachableStore is a store whose database was stopped once it was opened.
func unreachableStore(t *testing.T) *Store {
	slow(t)
	t.Helper()
	e := startEmbedded(t, t.TempDir())
	s := openStore(t, Config{URI: e.URI(), ServerSelectionTimeout: 200 * time.Millisecond})
	must(t, e.Close())
	return s
}

// nextDrop waits for the OnDropped call a test provoked.
func nextDrop(t *testing.T, drops <-chan error) error {
	t.Helper()
	select {
	case err := <-drops:
		return err
	case <-time.After(deadlockGuard):
		t.Fatal("never dropped")
		return nil
	}
}

// errorLog collects what is logged at error level.
type errorLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *errorLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *errorLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *errorLog) logger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), zerolog.LevelWriterAdapter{Writer: l})).Level(zerolog.ErrorLevel)
}

// TestQueueJournalKeepsAcknowledgedPermalinks: permalinks handed out while the database is down
// survive a crash, or a shutdown whose deadline passes, and are written when the queue is opened
// again with the database back.
func TestQueueJournalKeepsAcknowledgedPermalinks(t *testing.T) {
	slow(t)
	for _, stop := range []string{"crash", "shutdown with the database down"} {
		t.Run(stop, func(t *testing.T) {
			ctx := context.Background()
			dbDir := t.TempDir()
			e, err := StartEmbedded(ctx, EmbeddedConfig{Dir: dbDir, Logger: testLogger(t)})
			must(t, err)
			s := openStore(t, Config{URI: e.URI(), ServerSelectionTimeout: 300 * time.Millisecond})
			must(t, e.Close()) // unreachable from now on

			var mu sync.Mutex
			var dropped []string
			cfg := fastQueueConfig(t)
			cfg.JournalDir = filepath.Join(t.TempDir(), "permalink-queue")
			cfg.OnDropped = func(id string, err error) {
				mu.Lock()
				defer mu.Unlock()
				dropped = append(dropped, id)
			}
			q, err := OpenQueue(ctx, s.Permalinks(), cfg)
			must(t, err)
			cells := map[string]Cell{}
			for i := range 5 {
				c := Cell{Code: fmt.Sprintf("print(%d) # ☃", i), Language: "python3", Interacts: `[{"n": 1}]`}
				id, err := q.Enqueue(c)
				must(t, err)
				cells[id] = c
			}
			if again, err := q.Enqueue(Cell{Code: "print(0) # ☃", Language: "python3", Interacts: `[{"n": 1}]`}); err != nil || cells[again].Code == "" {
				t.Fatalf("Enqueue of a pending cell = %q, %v", again, err)
			}

			if stop == "crash" {
				crashQueue(t, q)
			} else {
				closeCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				err := q.Close(closeCtx)
				cancel()
				if err != nil {
					t.Errorf("Close with a journal = %v; nothing was lost", err)
				}
				if q.Len() != len(cells) {
					t.Errorf("Len after Close = %d, want the %d kept", q.Len(), len(cells))
				}
			}
			mu.Lock()
			if len(dropped) != 0 {
				t.Errorf("dropped %v, though they are in the journal", dropped)
			}
			mu.Unlock()

			restartEmbedded(t, dbDir)
			q2, err := OpenQueue(ctx, s.Permalinks(), cfg)
			must(t, err)
			for id, c := range cells {
				got, err := q2.Get(ctx, id)
				if err != nil || got.Cell != c {
					t.Errorf("Get(%s) after reopening = %+v, %v", id, got.Cell, err)
				}
			}
			eventually(t, 30*time.Second, "replayed permalinks written", func() bool { return q2.Len() == 0 })
			for id, c := range cells {
				got, err := s.Permalinks().Get(ctx, id)
				if err != nil || got.Cell != c {
					t.Errorf("stored %s = %+v, %v", id, got.Cell, err)
				}
			}
			must(t, q2.Close(ctx))
			data, err := os.ReadFile(filepath.Join(cfg.JournalDir, journalFile))
			must(t, err)
			if string(data) != journalMagic {
				t.Errorf("journal not compacted once everything was written: %d bytes", len(data))
			}
		})
	}
}

func TestQueueJournalIsLocked(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		cfg := fastQueueConfig(t)
		cfg.JournalDir = t.TempDir()
		q, err := OpenQueue(ctx, s.Permalinks(), cfg)
		must(t, err)
		defer q.Close(ctx)
		if _, err := OpenQueue(ctx, s.Permalinks(), cfg); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("second OpenQueue on the same journal = %v, want in use", err)
		}
		if info, err := os.Stat(cfg.JournalDir); err != nil || info.Mode().Perm()&0o077 != 0 {
			t.Errorf("journal directory %v, %v: must not be readable by others (it holds users' code)", info.Mode(), err)
		}

		// Not a journal: refuse rather than overwrite it.
		other := t.TempDir()
		must(t, os.WriteFile(filepath.Join(other, journalFile), []byte("something else entirely\n"), 0o600))
		cfg.JournalDir = other
		if _, err := OpenQueue(ctx, s.Permalinks(), cfg); err == nil || !strings.Contains(err.Error(), "not a permalink journal") {
			t.Errorf("OpenQueue on a foreign file = %v", err)
		}
	})
}

// TestQueueGivesUp: a permalink unwritten for MaxPending is dropped with ErrGaveUp, reported to
// OnDropped once, not logged by the queue (its caller logs), and not replayed.
func TestQueueGivesUp(t *testing.T) {
	ctx := context.Background()
	s := unreachableStore(t)

	var errs errorLog
	drops := make(chan error, 10)
	cfg := fastQueueConfig(t)
	cfg.Logger = errs.logger(t)
	cfg.MaxPending = time.Nanosecond // over at the first failed attempt
	cfg.JournalDir = t.TempDir()
	cfg.OnDropped = func(id string, err error) { drops <- err }
	q, err := OpenQueue(ctx, s.Permalinks(), cfg)
	must(t, err)
	if _, err := q.Enqueue(Cell{Code: "1", Language: "python3"}); err != nil {
		t.Fatal(err)
	}
	if err := nextDrop(t, drops); !errors.Is(err, ErrGaveUp) {
		t.Errorf("dropped with %v, want ErrGaveUp", err)
	}
	eventually(t, deadlockGuard, "dropped permalink forgotten", func() bool { return q.Len() == 0 })
	must(t, q.Close(ctx))
	if len(drops) != 0 {
		t.Errorf("dropped %d more times", len(drops))
	}
	if got := errs.String(); got != "" {
		t.Errorf("the queue logged errors itself: %s", got)
	}
	q2, err := OpenQueue(ctx, s.Permalinks(), cfg)
	must(t, err)
	if q2.Len() != 0 {
		t.Errorf("a dropped permalink was replayed")
	}
	must(t, q2.Close(ctx))
}

// TestQueueDropsPermanentFailures: a write the database refuses for good is dropped at once.
func TestQueueDropsPermanentFailures(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := s.Permalinks()
		cell := Cell{Code: "print('squatted')", Language: "python3"}
		digest := p.digest(cell)
		for attempt := range idAttempts {
			planted := permalinkDoc{ID: idCandidate(digest, attempt), Code: "other", Language: "python3",
				Digest: fmt.Sprint("other-", attempt), Created: time.Now().UTC(), LastAccessed: time.Now().UTC()}
			if _, err := p.coll.InsertOne(ctx, planted); err != nil {
				t.Fatal(err)
			}
		}
		var errs errorLog
		drops := make(chan error, 1)
		cfg := fastQueueConfig(t)
		cfg.Logger = errs.logger(t)
		cfg.OnDropped = func(id string, err error) { drops <- err }
		q := NewQueue(ctx, p, cfg)
		defer q.Close(ctx)
		if _, err := q.Enqueue(cell); err != nil {
			t.Fatal(err)
		}
		if err := nextDrop(t, drops); !errors.Is(err, errIDSpaceExhausted) {
			t.Errorf("dropped with %v", err)
		}
		if got := errs.String(); got != "" {
			t.Errorf("the queue logged errors itself: %s", got)
		}
	})
}

// TestQueueFullWithJournal: the journal holds no more than the queue's bound, and what is
// replayed counts against it.
func TestQueueFullWithJournal(t *testing.T) {
	ctx := context.Background()
	s := unreachableStore(t)
	cfg := fastQueueConfig(t)
	cfg.Capacity = 2
	cfg.JournalDir = t.TempDir()
	q, err := OpenQueue(ctx, s.Permalinks(), cfg)
	must(t, err)
	for i := range 2 {
		_, err := q.Enqueue(Cell{Code: fmt.Sprint(i), Language: "python3"})
		must(t, err)
	}
	if _, err := q.Enqueue(Cell{Code: "2", Language: "python3"}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Enqueue beyond capacity = %v", err)
	}
	crashQueue(t, q)
	q2, err := OpenQueue(ctx, s.Permalinks(), cfg)
	must(t, err)
	defer crashQueue(t, q2)
	if q2.Len() != 2 {
		t.Errorf("replayed %d, want 2", q2.Len())
	}
	if _, err := q2.Enqueue(Cell{Code: "2", Language: "python3"}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Enqueue beyond capacity after replay = %v", err)
	}
}

// testItems makes queue items as Enqueue would, with a key of its own.
func testItems(n int) []*queuedCell {
	p := &Permalinks{key: []byte("journal test key 0123456789abcdef"), maxCellBytes: DefaultConfig().MaxCellBytes}
	items := make([]*queuedCell, n)
	for i := range items {
		c := Cell{Code: fmt.Sprintf("x = %d\n", i) + strings.Repeat("é", i*50), Language: "python3", Interacts: "[]"}
		d := p.digest(c)
		items[i] = &queuedCell{id: idCandidate(d, i%2), attempt: i % 2, cell: c, digest: d,
			enqueued: time.Unix(1700000000, int64(i)*1e6), durable: make(chan struct{})}
	}
	return items
}

func liveIDs(records []journalRecord) []string {
	var ids []string
	for _, r := range records {
		ids = append(ids, r.id)
	}
	return ids
}

// TestJournalTornTail damages the end of a journal in the ways a crash or a bad disk does: what
// precedes the damage is replayed, and appends after reopening are readable again.
func TestJournalTornTail(t *testing.T) {
	items := testItems(4)
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	must(t, err)
	must(t, j.rewrite(nil))
	for _, item := range items[:3] {
		must(t, j.add(item))
	}
	must(t, j.done(items[0]))
	must(t, j.close())
	intact, err := os.ReadFile(filepath.Join(dir, journalFile))
	must(t, err)
	if _, valid, err := decodeJournal(intact); err != nil || valid != len(intact) {
		t.Fatalf("intact journal decodes to %d of %d bytes: %v", valid, len(intact), err)
	}
	// The last record is the done of items[0]; the one before it the add of items[2].
	lastRecord := len(intact) - (journalFrameBytes + 1 + 1 + len(items[0].id))

	tests := []struct {
		name   string
		damage func([]byte) []byte
		want   []string // live ids after reopening
	}{
		{"intact", func(b []byte) []byte { return b }, []string{items[1].id, items[2].id}},
		{"last record cut short", func(b []byte) []byte { return b[:len(b)-1] }, []string{items[0].id, items[1].id, items[2].id}},
		{"cut inside a frame header", func(b []byte) []byte { return b[:lastRecord+3] }, []string{items[0].id, items[1].id, items[2].id}},
		{"cut inside an add", func(b []byte) []byte { return b[:lastRecord-20] }, []string{items[0].id, items[1].id}},
		{"bit flipped in the last record", func(b []byte) []byte { b[len(b)-2] ^= 0x10; return b }, []string{items[0].id, items[1].id, items[2].id}},
		{"garbage appended", func(b []byte) []byte { return append(b, "\x00\x00\x01\x00garbage"...) }, []string{items[1].id, items[2].id}},
		{"zeros appended", func(b []byte) []byte { return append(b, make([]byte, 4096)...) }, []string{items[1].id, items[2].id}},
		{"huge length", func(b []byte) []byte { return append(b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0) }, []string{items[1].id, items[2].id}},
		{"header torn", func(b []byte) []byte { return b[:5] }, nil},
		{"empty", func(b []byte) []byte { return nil }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			damaged := tc.damage(bytes.Clone(intact))
			must(t, os.WriteFile(filepath.Join(dir, journalFile), damaged, 0o600))
			j, records, discarded, err := openJournal(dir)
			must(t, err)
			if got := liveIDs(records); !slices.Equal(got, tc.want) {
				t.Errorf("replayed %q, want %q", got, tc.want)
			}
			_, valid, _ := decodeJournal(damaged)
			if discarded != len(damaged)-valid {
				t.Errorf("discarded %d bytes, want %d", discarded, len(damaged)-valid)
			}
			_, err = os.Stat(filepath.Join(dir, journalCorruptFile))
			if kept := err == nil; kept != (discarded > 0 && valid > len(journalMagic)) {
				t.Errorf("corrupt copy kept: %v (discarded %d)", kept, discarded)
			}

			// Appending after reopening: nothing is lost behind the damage.
			live := make([]*queuedCell, 0, len(records))
			for i, r := range records {
				live = append(live, &queuedCell{id: r.id, attempt: r.attempt, cell: r.cell, digest: r.digest, enqueued: r.enqueued, seq: uint64(i)})
			}
			must(t, j.rewrite(live))
			must(t, j.add(items[3]))
			must(t, j.close())
			j2, again, _, err := openJournal(dir)
			must(t, err)
			defer j2.close()
			if got, want := liveIDs(again), append(slices.Clone(tc.want), items[3].id); !slices.Equal(got, want) {
				t.Errorf("after an append, replayed %q, want %q", got, want)
			}
			for _, r := range again {
				if r.id == items[3].id && (r.cell != items[3].cell || r.digest != items[3].digest || !r.enqueued.Equal(items[3].enqueued)) {
					t.Errorf("record of %s decoded as %+v", r.id, r)
				}
			}
		})
	}
}

// TestJournalCompaction: done records do not pile up beyond a bound, and an emptied journal is
// truncated to its header.
func TestJournalCompaction(t *testing.T) {
	slow(t)
	dir := t.TempDir()
	j, _, _, err := openJournal(dir)
	must(t, err)
	defer j.close()
	must(t, j.rewrite(nil))
	items := testItems(3*journalGarbageSlack + 10)
	keep := items[0]
	must(t, j.add(keep))
	for _, item := range items[1:] {
		must(t, j.add(item))
		must(t, j.done(item))
		if j.records > 2*len(j.live)+journalGarbageSlack {
			t.Fatalf("%d records for %d live", j.records, len(j.live))
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, journalFile))
	must(t, err)
	records, _, err := decodeJournal(data)
	must(t, err)
	if len(records) > 2+journalGarbageSlack {
		t.Errorf("%d records in the file for one live permalink", len(records))
	}
	must(t, j.done(keep))
	data, err = os.ReadFile(filepath.Join(dir, journalFile))
	must(t, err)
	if string(data) != journalMagic {
		t.Errorf("emptied journal is %d bytes, want just the header", len(data))
	}
}

func FuzzJournalDecode(f *testing.F) {
	var valid []byte
	valid = append(valid, journalMagic...)
	for _, item := range testItems(3) {
		valid = appendJournalRecord(valid, item.record())
	}
	valid = appendJournalRecord(valid, journalRecord{done: true, id: testItems(1)[0].id})
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add([]byte(journalMagic))
	f.Add([]byte(journalMagic[:4]))
	f.Add(append([]byte(journalMagic), 0, 0, 0, 1, 0, 0, 0, 0, 9))
	f.Add([]byte("not a journal"))
	f.Fuzz(func(t *testing.T, data []byte) {
		records, n, err := decodeJournal(data)
		if err != nil {
			if n != 0 || records != nil {
				t.Fatalf("error %v with %d records over %d bytes", err, len(records), n)
			}
			return
		}
		if n < 0 || n > len(data) {
			t.Fatalf("valid prefix %d of %d bytes", n, len(data))
		}
		if n == 0 {
			if len(records) != 0 || !bytes.HasPrefix([]byte(journalMagic), data) {
				t.Fatalf("%d records from %q", len(records), data)
			}
			return
		}
		// What was decoded is exactly what encoding the records gives back.
		again := []byte(journalMagic)
		for _, r := range records {
			if !validID(r.id) || (!r.done && r.id != idCandidate(r.digest, r.attempt)) {
				t.Fatalf("decoded an inconsistent record %+v", r)
			}
			again = appendJournalRecord(again, r)
		}
		if !bytes.Equal(again, data[:n]) {
			t.Fatalf("re-encoding %d records gives %d bytes, not the %d decoded", len(records), len(again), n)
		}
		// Appending to the valid prefix keeps every record.
		more := appendJournalRecord(bytes.Clone(data[:n]), journalRecord{done: true, id: "AAAA"})
		if recs, m, _ := decodeJournal(more); len(recs) != len(records)+1 || m != len(more) {
			t.Fatalf("after an append: %d records over %d of %d bytes", len(recs), m, len(more))
		}
	})
}
