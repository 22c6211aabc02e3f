package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
)

func fastQueueConfig(t testing.TB) QueueConfig {
	return QueueConfig{
		MinBackoff:     20 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		AttemptTimeout: 2 * time.Second,
		Logger:         testLogger(t),
	}
}

func TestQueueWritesInBackground(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		q := NewQueue(ctx, s.Permalinks(), fastQueueConfig(t))
		cells := []Cell{
			{Code: "1", Language: "python3"},
			{Code: "2", Language: "python3", Interacts: "[]"},
			{Code: "1", Language: "python3"}, // duplicate: same id
		}
		ids := make([]string, len(cells))
		for i, c := range cells {
			id, err := q.Enqueue(c)
			if err != nil {
				t.Fatalf("Enqueue: %v", err)
			}
			if id != s.Permalinks().ID(c) {
				t.Errorf("Enqueue gave %q, want the derived id %q", id, s.Permalinks().ID(c))
			}
			ids[i] = id
		}
		if ids[0] != ids[2] {
			t.Errorf("duplicate cells got ids %q and %q", ids[0], ids[2])
		}
		if _, err := q.Enqueue(Cell{Code: "x"}); !errors.Is(err, ErrInvalidCell) {
			t.Errorf("Enqueue(invalid) = %v, want ErrInvalidCell", err)
		}
		for i, id := range ids {
			got, err := q.Get(ctx, id)
			if err != nil || got.Cell != cells[i] {
				t.Errorf("Get(%s) = %+v, %v", id, got.Cell, err)
			}
		}
		closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := q.Close(closeCtx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := q.Close(closeCtx); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, err := q.Enqueue(cells[0]); !errors.Is(err, ErrQueueClosed) {
			t.Errorf("Enqueue after Close = %v, want ErrQueueClosed", err)
		}
		got, err := s.Permalinks().Get(ctx, ids[0])
		if err != nil {
			t.Fatalf("stored permalink: %v", err)
		}
		// Two Gets served while pending (ids[0] and ids[2]), one now; some may have been
		// served by the database already, but none is lost.
		if got.Requests != 3 {
			t.Errorf("requests = %d, want 3", got.Requests)
		}
	})
}

func TestQueueFull(t *testing.T) {
	slow(t)
	ctx := context.Background()
	e := startEmbedded(t, t.TempDir())
	s := openStore(t, Config{URI: e.URI(), ServerSelectionTimeout: 300 * time.Millisecond})
	if err := e.Close(); err != nil { // the database goes away: nothing gets written
		t.Fatal(err)
	}
	var mu sync.Mutex
	var dropped []string
	var errs errorLog
	cfg := fastQueueConfig(t)
	cfg.Logger = errs.logger(t)
	cfg.Capacity = 3
	cfg.OnDropped = func(id string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if !errors.Is(err, ErrQueueClosed) {
			t.Errorf("OnDropped(%s, %v): want ErrQueueClosed", id, err)
		}
		dropped = append(dropped, id)
	}
	q := NewQueue(ctx, s.Permalinks(), cfg)
	for i := range 3 {
		if _, err := q.Enqueue(Cell{Code: fmt.Sprint(i), Language: "python3"}); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	if _, err := q.Enqueue(Cell{Code: "one too many", Language: "python3"}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("Enqueue beyond capacity = %v, want ErrQueueFull", err)
	}
	// A cell already pending is not a new entry.
	if _, err := q.Enqueue(Cell{Code: "0", Language: "python3"}); err != nil {
		t.Errorf("Enqueue of a pending cell on a full queue = %v, want its id", err)
	}

	closeCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := q.Close(closeCtx); !errors.Is(err, ErrQueueClosed) {
		t.Errorf("Close with the database down = %v, want ErrQueueClosed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dropped) != 3 {
		t.Errorf("OnDropped called for %d permalinks, want 3", len(dropped))
	}
	// Close returned the error and OnDropped had each id: logging is the caller's.
	if got := errs.String(); got != "" {
		t.Errorf("the queue logged errors itself: %s", got)
	}
}

// TestQueueSurvivesDatabaseRestart stops the embedded database mid-run: the queue keeps
// accepting, serves what it holds, and writes it all once the database is back on the same
// directory (and, the socket being in that directory, the same address).
func TestQueueSurvivesDatabaseRestart(t *testing.T) {
	slow(t)
	ctx := context.Background()
	dir := t.TempDir()
	e := startEmbedded(t, dir)
	s := openStore(t, Config{URI: e.URI(), ServerSelectionTimeout: 300 * time.Millisecond})
	var dropped []string
	var mu sync.Mutex
	cfg := fastQueueConfig(t)
	cfg.OnDropped = func(id string, err error) {
		mu.Lock()
		defer mu.Unlock()
		dropped = append(dropped, id)
	}
	q := NewQueue(ctx, s.Permalinks(), cfg)

	before, err := q.Enqueue(Cell{Code: "before", Language: "python3"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "first permalink written", func() bool { return q.Len() == 0 })

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// A cell written lately is known: running it again needs neither the
	// journal nor the database.
	if again, err := q.Enqueue(Cell{Code: "before", Language: "python3"}); err != nil || again != before || q.Len() != 0 {
		t.Errorf("re-enqueue of a stored cell = %q, %v with %d pending; want %q from memory, nothing pending", again, err, q.Len(), before)
	}

	during := make(map[string]Cell)
	for i := range 20 {
		c := Cell{Code: fmt.Sprintf("print(%d)", i), Language: "python3", Interacts: "[]"}
		id, err := q.Enqueue(c)
		if err != nil {
			t.Fatalf("Enqueue while the database is down: %v", err)
		}
		during[id] = c
	}
	if q.Len() != len(during) {
		t.Errorf("pending = %d, want %d", q.Len(), len(during))
	}
	for id, c := range during {
		got, err := q.Get(ctx, id)
		if err != nil || got.Cell != c || got.Requests != 1 {
			t.Fatalf("Get(%s) of a pending permalink = %+v, %v", id, got, err)
		}
	}
	// Stored before the outage: only the database has it, and it is down.
	if _, err := q.Get(ctx, before); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a stored permalink with the database down = %v, want a database error", err)
	}

	e2, err := StartEmbedded(ctx, EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { _ = e2.Close() })
	if e2.URI() != e.URI() {
		t.Fatalf("restarted at %s, was %s", e2.URI(), e.URI())
	}
	eventually(t, 30*time.Second, "queued permalinks written", func() bool { return q.Len() == 0 })

	for id, c := range during {
		got, err := s.Permalinks().Get(ctx, id)
		if err != nil || got.Cell != c {
			t.Fatalf("stored %s = %+v, %v", id, got.Cell, err)
		}
		if got.Requests != 2 { // one served from the queue, one now
			t.Errorf("%s: requests = %d, want 2", id, got.Requests)
		}
	}
	if _, err := q.Get(ctx, before); err != nil {
		t.Errorf("Get(%s) after restart: %v", before, err)
	}
	if err := q.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dropped) != 0 {
		t.Errorf("dropped %v", dropped)
	}
}

func TestQueueStoppedByContext(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx, cancel := context.WithCancel(context.Background())
		q := NewQueue(ctx, s.Permalinks(), fastQueueConfig(t))
		cancel()
		if _, err := q.Enqueue(Cell{Code: "1", Language: "python3"}); !errors.Is(err, ErrQueueClosed) {
			t.Errorf("Enqueue after the context ended = %v, want ErrQueueClosed", err)
		}
		if err := q.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func TestIsPermanent(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{"canceled", context.Canceled, false},
		{"server selection", errors.New("server selection error: context deadline exceeded"), false},
		{"network", mongo.CommandError{Code: 0, Labels: []string{"NetworkError"}}, false},
		{"stepdown", mongo.CommandError{Code: 189, Name: "PrimarySteppedDown"}, false},
		{"retryable label", mongo.CommandError{Code: 1, Labels: []string{"RetryableWriteError"}}, false},
		{"write concern", mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 64}}, false},
		{"not primary write", mongo.WriteException{WriteErrors: []mongo.WriteError{{Code: 10107}}}, false},
		{"bad value", mongo.CommandError{Code: 2, Name: "BadValue"}, true},
		{"document rejected", mongo.WriteException{WriteErrors: []mongo.WriteError{{Code: 121, Message: "Document failed validation"}}}, true},
		{"id space", errIDSpaceExhausted, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := isPermanent(tc.err); got != tc.want {
				t.Errorf("isPermanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestStoredCellsBoundedAndExpire(t *testing.T) {
	now := time.Now()
	c := newStoredCells(2, time.Minute)
	d := func(b byte) (k [32]byte) { k[0] = b; return k }
	c.add(d(1), "one", now)
	c.add(d(2), "two", now)
	c.add(d(3), "three", now) // evicts the oldest
	if _, ok := c.lookup(d(1), now); ok {
		t.Error("oldest entry not evicted")
	}
	for b, want := range map[byte]string{2: "two", 3: "three"} {
		if id, ok := c.lookup(d(b), now); !ok || id != want {
			t.Errorf("lookup(%d) = %q, %v", b, id, ok)
		}
	}
	if len(c.byDigest) != 2 || len(c.ring) != 2 {
		t.Errorf("holds %d entries in a ring of %d, cap 2", len(c.byDigest), len(c.ring))
	}
	if _, ok := c.lookup(d(2), now.Add(2*time.Minute)); ok {
		t.Error("expired entry still trusted")
	}
}

func TestDefaultQueueConfig(t *testing.T) {
	d := DefaultQueueConfig()
	if d.Capacity != 10000 || d.Workers != 2 || d.AttemptTimeout != 10*time.Second || d.MinBackoff != 100*time.Millisecond ||
		d.MaxBackoff != 10*time.Second || d.MaxPending != time.Hour || d.JournalDir != "" {
		t.Errorf("DefaultQueueConfig() = %+v", d)
	}
	type knobs struct {
		capacity, workers                           int
		attempt, minBackoff, maxBackoff, maxPending time.Duration
	}
	of := func(c QueueConfig) knobs {
		return knobs{c.Capacity, c.Workers, c.AttemptTimeout, c.MinBackoff, c.MaxBackoff, c.MaxPending}
	}
	tests := []struct {
		name string
		cfg  QueueConfig
		want knobs
	}{
		{"zero", QueueConfig{}, of(d)},
		{"defaults", d, of(d)},
		{"negative", QueueConfig{Capacity: -1, Workers: -1, AttemptTimeout: -1, MinBackoff: -1, MaxBackoff: -1, MaxPending: -1}, of(d)},
		{"set", QueueConfig{Capacity: 5, Workers: 1, AttemptTimeout: time.Second, MinBackoff: time.Millisecond, MaxBackoff: time.Second, MaxPending: time.Minute},
			knobs{5, 1, time.Second, time.Millisecond, time.Second, time.Minute}},
		// A MaxBackoff below MinBackoff is not a bound: the default, or MinBackoff when larger.
		{"max below min", QueueConfig{MinBackoff: time.Second, MaxBackoff: time.Millisecond}, knobs{d.Capacity, d.Workers, d.AttemptTimeout, time.Second, d.MaxBackoff, d.MaxPending}},
		{"min above default max", QueueConfig{MinBackoff: time.Minute}, knobs{d.Capacity, d.Workers, d.AttemptTimeout, time.Minute, time.Minute, d.MaxPending}},
	}
	for _, tc := range tests {
		if got := of(tc.cfg.withDefaults()); got != tc.want {
			t.Errorf("%s: withDefaults() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
