package storage

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

var (
	// ErrQueueFull is returned by Enqueue when the bounded set of unwritten permalinks is full
	// (the database has been slow or down for a while). Nothing was queued.
	ErrQueueFull = errors.New("storage: permalink queue full")
	// ErrQueueClosed is returned by Enqueue after Close, and passed to OnDropped for permalinks
	// still unwritten when Close's deadline passed (without a journal).
	ErrQueueClosed = errors.New("storage: permalink queue closed")
	// ErrGaveUp is passed to OnDropped when a permalink stayed unwritten for QueueConfig.MaxPending.
	ErrGaveUp = errors.New("storage: gave up writing permalink")
)

// QueueConfig configures OpenQueue. Start from DefaultQueueConfig; zero fields take its values too.
type QueueConfig struct {
	// Capacity bounds the unwritten permalinks kept in memory (and in the journal). Default 10000.
	Capacity int
	// Workers write concurrently. Default 2.
	Workers int
	// AttemptTimeout bounds one write attempt. Default 10 s.
	AttemptTimeout time.Duration
	// MinBackoff and MaxBackoff bound the (jittered, doubling) wait between attempts of a write
	// that failed with a transient error. Defaults 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// MaxPending is how long a permalink is retried before it is dropped. Default 1 h.
	MaxPending time.Duration

	// JournalDir makes the queue durable: every permalink is appended to a journal in this
	// directory, and fsync'd, before its id is handed out, and stays there until it is written.
	// OpenQueue replays the journal, so a crash, or a shutdown while the database is down, loses
	// nothing acknowledged. The directory is created (mode 0700: it holds users' code) and
	// locked: one queue per directory. Empty keeps the queue in memory only.
	JournalDir string

	// OnDropped is called when a permalink whose id was handed out will not be stored: the server
	// rejected it, MaxPending passed, or, for a queue without a journal, Close's deadline passed
	// (err wraps ErrQueueClosed or ErrGaveUp, or is the server's error). It runs on a queue
	// goroutine and must not block. The queue does not log drops itself: this is the place to.
	OnDropped func(id string, err error)
	// OnMoved is called when the id handed out was found, on writing, to belong to a different
	// cell already stored (a hash prefix collision, about one in 10^4 after 10^9 permalinks); the
	// cell was stored under newID instead. It runs on a queue goroutine and must not block.
	OnMoved func(oldID, newID string)

	Logger zerolog.Logger
}

// DefaultQueueConfig is the queue's settings when nothing is said: the one place each default
// lives. It keeps the queue in memory only (no JournalDir).
func DefaultQueueConfig() QueueConfig {
	return QueueConfig{
		Capacity:       10000,
		Workers:        2,
		AttemptTimeout: 10 * time.Second,
		MinBackoff:     100 * time.Millisecond,
		MaxBackoff:     10 * time.Second,
		MaxPending:     time.Hour,
	}
}

// withDefaults fills zero and negative fields from DefaultQueueConfig. A MaxBackoff below
// MinBackoff (zero included) becomes the default, or MinBackoff if that is larger.
func (c QueueConfig) withDefaults() QueueConfig {
	d := DefaultQueueConfig()
	fillPositive(&c.Capacity, d.Capacity)
	fillPositive(&c.Workers, d.Workers)
	fillPositive(&c.AttemptTimeout, d.AttemptTimeout)
	fillPositive(&c.MinBackoff, d.MinBackoff)
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(d.MaxBackoff, c.MinBackoff)
	}
	fillPositive(&c.MaxPending, d.MaxPending)
	return c
}

// Queue is a write-behind buffer in front of Permalinks: Enqueue hands out the id without waiting
// for the database; workers write in the background, retrying with backoff while the database is
// slow or down. Until a permalink is written, Get serves it from memory, so an id handed to a
// client is readable at once; with a journal (QueueConfig.JournalDir) it is also readable after a
// crash or restart.
type Queue struct {
	permalinks *Permalinks
	cfg        QueueConfig
	log        zerolog.Logger
	journal    *journal // nil: memory only

	mu      sync.Mutex
	pending map[string]*queuedCell // by handed-out id
	closed  bool
	// stored remembers cells written lately, so the same cell run again
	// (every reader of a page with an embedded cell runs the same code)
	// costs neither a journal write nor a database round trip.
	stored storedCells

	order    chan *queuedCell // FIFO of pending; never fuller than pending, so sends never block
	draining chan struct{}    // closed by Close: workers exit once order is empty
	ctx      context.Context  // cancelled to stop workers at once
	cancel   context.CancelFunc
	workers  sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

type queuedCell struct {
	id       string // as handed out
	attempt  int    // first candidate id to try (see idDigestLength)
	cell     Cell
	digest   [sha256.Size]byte
	enqueued time.Time
	seq      uint64 // journal order; guarded by journal.mu

	// durable is closed once the item is in the journal (at once without one), journalErr
	// set before if that failed. Enqueue hands out no id before.
	durable    chan struct{}
	journalErr error

	// Gets served from the queue; guarded by Queue.mu.
	requests   int64
	lastAccess time.Time
}

// NewQueue starts a queue kept in memory only, ignoring cfg.JournalDir: what is pending when the
// process dies is lost. Prefer OpenQueue.
func NewQueue(ctx context.Context, permalinks *Permalinks, cfg QueueConfig) *Queue {
	cfg.JournalDir = ""
	q, _ := OpenQueue(ctx, permalinks, cfg) // cannot fail without a journal
	return q
}

// OpenQueue starts the queue's workers, after replaying cfg.JournalDir's journal when set: the
// permalinks it holds are pending again, served by Get and written as soon as the database
// allows. A torn or corrupt journal tail is discarded (a copy of the journal is kept beside it).
// The workers stop when Close returns or, without draining, when ctx is cancelled.
func OpenQueue(ctx context.Context, permalinks *Permalinks, cfg QueueConfig) (*Queue, error) {
	cfg = cfg.withDefaults()
	q := &Queue{
		permalinks: permalinks,
		cfg:        cfg,
		log:        cfg.Logger.With().Str("component", "permalink-queue").Logger(),
		pending:    make(map[string]*queuedCell),
		draining:   make(chan struct{}),
		stored:     newStoredCells(storedCellsCap, storedCellsTTL),
	}
	var replayed []*queuedCell
	if cfg.JournalDir != "" {
		var err error
		if replayed, err = q.openJournal(cfg.JournalDir); err != nil {
			return nil, err
		}
	}
	// Replayed permalinks are kept even beyond Capacity: they were acknowledged.
	q.order = make(chan *queuedCell, max(cfg.Capacity, len(replayed)))
	for _, item := range replayed {
		q.order <- item
	}
	q.ctx, q.cancel = context.WithCancel(ctx)
	q.workers.Add(cfg.Workers)
	for range cfg.Workers {
		go q.work()
	}
	return q, nil
}

func (q *Queue) openJournal(dir string) ([]*queuedCell, error) {
	j, records, discarded, err := openJournal(dir)
	if err != nil {
		return nil, err
	}
	items := make([]*queuedCell, 0, len(records))
	for i, r := range records {
		item := &queuedCell{
			id: r.id, attempt: r.attempt, cell: r.cell, digest: r.digest, enqueued: r.enqueued,
			seq: uint64(i), durable: make(chan struct{}),
		}
		close(item.durable)
		items = append(items, item)
		q.pending[item.id] = item
	}
	// A fresh file: no torn tail for appends to land behind, and no done records.
	// items are in journal order already.
	if err := j.rewrite(items); err != nil {
		_ = j.close()
		return nil, err
	}
	q.journal = j
	if discarded > 0 {
		q.log.Warn().Str("dir", dir).Int("bytes", discarded).
			Msg("permalink journal ended in a torn or corrupt record; kept what preceded it")
	}
	if len(items) > 0 {
		q.log.Info().Str("dir", dir).Int("permalinks", len(items)).Msg("replaying unwritten permalinks from the journal")
	}
	return items, nil
}

// Enqueue validates cell and returns its id without waiting for the database (but, with a
// journal, after the cell is on disk). It fails only for an invalid cell (ErrInvalidCell), a full
// queue (ErrQueueFull), a closed one (ErrQueueClosed), or a journal that cannot be written.
func (q *Queue) Enqueue(cell Cell) (string, error) {
	if err := q.permalinks.Validate(cell); err != nil {
		return "", err
	}
	digest := q.permalinks.digest(cell)
	now := time.Now()

	q.mu.Lock()
	if q.closed || q.ctx.Err() != nil {
		q.mu.Unlock()
		return "", ErrQueueClosed
	}
	if id, ok := q.stored.lookup(digest, now); ok {
		q.mu.Unlock()
		return id, nil
	}
	var item *queuedCell
	for attempt := range idAttempts {
		id := idCandidate(digest, attempt)
		if other, ok := q.pending[id]; ok {
			if other.digest == digest {
				q.mu.Unlock()
				return q.handOut(other) // same cell still pending
			}
			continue // a different pending cell has this id: take the next one, as store would
		}
		if len(q.pending) >= q.cfg.Capacity {
			q.mu.Unlock()
			return "", ErrQueueFull
		}
		item = &queuedCell{id: id, attempt: attempt, cell: cell, digest: digest, enqueued: now, durable: make(chan struct{})}
		q.pending[id] = item // reserves the id and the capacity while the journal is written
		break
	}
	q.mu.Unlock()
	if item == nil {
		return "", errIDSpaceExhausted
	}

	if q.journal != nil {
		item.journalErr = q.journal.add(item)
	}
	close(item.durable)
	if item.journalErr != nil {
		q.forget(item)
		return "", fmt.Errorf("storage: queue permalink: %w", item.journalErr)
	}
	q.order <- item // cannot block: len(order) <= len(pending) <= cap(order)
	return item.id, nil
}

// handOut returns the id of an item already pending once it is as durable as a new one would be.
func (q *Queue) handOut(item *queuedCell) (string, error) {
	<-item.durable
	if item.journalErr != nil {
		return "", fmt.Errorf("storage: queue permalink: %w", item.journalErr)
	}
	return item.id, nil
}

// Get returns a pending permalink from memory, or else the stored one (see Permalinks.Get).
func (q *Queue) Get(ctx context.Context, id string) (Permalink, error) {
	now := time.Now()
	q.mu.Lock()
	if item, ok := q.pending[id]; ok {
		item.requests++
		item.lastAccess = now
		p := Permalink{ID: id, Cell: item.cell, Created: item.enqueued, LastAccessed: now, Requests: item.requests}
		q.mu.Unlock()
		return p, nil
	}
	q.mu.Unlock()
	// Not pending means written (an item leaves pending only after its write succeeded) or
	// dropped; either way the database has the answer.
	return q.permalinks.Get(ctx, id)
}

// Peek is Get without counting a request (for link previews).
func (q *Queue) Peek(ctx context.Context, id string) (Permalink, error) {
	q.mu.Lock()
	if item, ok := q.pending[id]; ok {
		p := Permalink{ID: id, Cell: item.cell, Created: item.enqueued, LastAccessed: item.lastAccess, Requests: item.requests}
		q.mu.Unlock()
		return p, nil
	}
	q.mu.Unlock()
	return q.permalinks.Peek(ctx, id)
}

// ErrStillWriting is returned by Delete for a permalink the queue has not written yet.
var ErrStillWriting = errors.New("storage: the permalink is still being written; try again shortly")

// Delete removes permalink id from the database and forgets it was written, so the same cell
// run again is stored again. One still waiting to be written is refused with ErrStillWriting.
func (q *Queue) Delete(ctx context.Context, id string) error {
	q.mu.Lock()
	if _, ok := q.pending[id]; ok {
		q.mu.Unlock()
		return ErrStillWriting
	}
	q.stored.forgetID(id)
	q.mu.Unlock()
	return q.permalinks.Delete(ctx, id)
}

// Len is the number of permalinks not yet written. After Close, it is the number kept in the
// journal for the next start (zero without a journal: they were dropped).
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// Close stops accepting permalinks and keeps writing the pending ones until they are all written
// or ctx ends; then it stops the workers. With a journal, what is still unwritten stays in it for
// the next OpenQueue, and Close reports no error for it. Without one, the unwritten permalinks
// are reported to OnDropped and counted in the error (wrapping ErrQueueClosed), which is not
// logged here. Safe to call more than once.
func (q *Queue) Close(ctx context.Context) error {
	q.closeOnce.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		close(q.draining)

		drained := make(chan struct{})
		go func() {
			q.workers.Wait()
			close(drained)
		}()
		select {
		case <-drained:
		case <-ctx.Done():
			q.cancel()
			<-drained
		}
		q.cancel()

		if q.journal != nil {
			if kept := q.Len(); kept > 0 {
				q.log.Info().Int("permalinks", kept).Str("dir", q.cfg.JournalDir).
					Msg("unwritten permalinks kept in the journal for the next start")
			}
			q.closeErr = q.journal.close()
			return
		}
		q.mu.Lock()
		lost := make([]string, 0, len(q.pending))
		for id := range q.pending {
			lost = append(lost, id)
		}
		clear(q.pending)
		q.mu.Unlock()
		for _, id := range lost {
			if q.cfg.OnDropped != nil {
				q.cfg.OnDropped(id, ErrQueueClosed)
			}
		}
		if len(lost) > 0 {
			q.closeErr = fmt.Errorf("%w: %d permalinks not written before the deadline", ErrQueueClosed, len(lost))
		}
	})
	return q.closeErr
}

func (q *Queue) work() {
	defer q.workers.Done()
	for {
		select {
		case item := <-q.order:
			q.write(item)
		case <-q.draining:
			for {
				select {
				case item := <-q.order:
					q.write(item)
				case <-q.ctx.Done():
					return
				default:
					return
				}
			}
		case <-q.ctx.Done():
			return
		}
	}
}

// write stores one item, retrying transient failures until it succeeds, a permanent error or
// MaxPending ends it, or the queue is stopped (the item then stays pending for Close).
func (q *Queue) write(item *queuedCell) {
	backoff := q.cfg.MinBackoff
	for failures := 0; ; failures++ {
		q.mu.Lock()
		requests := item.requests
		q.mu.Unlock()

		attemptCtx, cancel := context.WithTimeout(q.ctx, q.cfg.AttemptTimeout)
		res, err := q.permalinks.store(attemptCtx, item.cell, item.digest, item.attempt, item.enqueued, requests)
		cancel()
		if err == nil {
			q.written(item, res, requests)
			return
		}
		if q.ctx.Err() != nil {
			return
		}
		if isPermanent(err) {
			q.dropped(item, err)
			return
		}
		if time.Since(item.enqueued) > q.cfg.MaxPending {
			q.dropped(item, fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, failures+1, err))
			return
		}
		ev := q.log.Debug()
		if failures == 0 {
			ev = q.log.Warn()
		}
		ev.Err(err).Str("id", item.id).Int("pending", q.Len()).Dur("retry_in", backoff).
			Msg("permalink write failed; retrying")

		// Full jitter keeps the workers of many instances from retrying in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-q.ctx.Done():
			timer.Stop()
			return
		}
		backoff = min(backoff*2, q.cfg.MaxBackoff)
	}
}

func (q *Queue) written(item *queuedCell, res storeResult, storedRequests int64) {
	q.markDone(item)
	q.mu.Lock()
	// Leaving pending and becoming known happen together, so an Enqueue of
	// the same cell finds it in one place or the other, never in neither.
	q.removePendingLocked(item)
	q.stored.add(item.digest, res.id, time.Now())
	extra, lastAccess := item.requests, item.lastAccess
	if res.inserted {
		extra -= storedRequests
	}
	q.mu.Unlock()

	if extra > 0 {
		// Gets served from memory while (or before) the document was written.
		ctx, cancel := context.WithTimeout(q.ctx, q.cfg.AttemptTimeout)
		if err := q.permalinks.addRequests(ctx, res.id, extra, lastAccess); err != nil {
			q.log.Debug().Err(err).Str("id", res.id).Msg("lost request count of a queued permalink")
		}
		cancel()
	}
	if res.id != item.id {
		q.log.Warn().Str("id", item.id).Str("stored_as", res.id).Msg("permalink id collided with a stored cell")
		if q.cfg.OnMoved != nil {
			q.cfg.OnMoved(item.id, res.id)
		}
	}
}

// forget removes an item that needs no more writing, from the journal first: until it is gone
// from pending, an Enqueue of the same cell reuses it rather than journaling it again, so its
// done record cannot cancel a newer add.
func (q *Queue) forget(item *queuedCell) {
	q.markDone(item)
	q.mu.Lock()
	q.removePendingLocked(item)
	q.mu.Unlock()
}

// markDone records in the journal that item needs no replay; it comes
// before the item leaves pending.
func (q *Queue) markDone(item *queuedCell) {
	if q.journal != nil && item.journalErr == nil {
		if err := q.journal.done(item); err != nil {
			// Harmless: the item is replayed at the next start and found stored (or dropped
			// again); the journal repairs itself before the next append.
			q.log.Warn().Err(err).Str("id", item.id).Msg("could not mark a permalink finished in the journal")
		}
	}
}

func (q *Queue) removePendingLocked(item *queuedCell) {
	if q.pending[item.id] == item {
		delete(q.pending, item.id)
	}
}

func (q *Queue) dropped(item *queuedCell, err error) {
	q.forget(item)
	if q.cfg.OnDropped != nil {
		q.cfg.OnDropped(item.id, err)
	}
}

// isPermanent tells errors that retrying cannot fix (the server rejected the document) from those
// of a slow, unreachable or failing-over server.
func isPermanent(err error) bool {
	switch {
	case errors.Is(err, errIDSpaceExhausted):
		return true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		mongo.IsNetworkError(err), mongo.IsTimeout(err):
		return false
	}
	var we mongo.WriteException
	if errors.As(err, &we) && we.WriteConcernError != nil {
		return false
	}
	var se mongo.ServerError
	if !errors.As(err, &se) {
		return false // e.g. server selection or pool errors: the server is not there (yet)
	}
	if se.HasErrorLabel("RetryableWriteError") || se.HasErrorLabel("TransientTransactionError") {
		return false
	}
	for _, code := range transientServerCodes() {
		if se.HasErrorCode(code) {
			return false
		}
	}
	return true
}

// transientServerCodes are server error codes of shutdowns, elections, timeouts and network
// trouble between servers. A function, so that the table cannot be changed.
func transientServerCodes() [16]int {
	return [...]int{
		6,     // HostUnreachable
		7,     // HostNotFound
		50,    // MaxTimeMSExpired
		64,    // WriteConcernFailed
		89,    // NetworkTimeout
		91,    // ShutdownInProgress
		112,   // WriteConflict
		133,   // FailedToSatisfyReadPreference
		189,   // PrimarySteppedDown
		262,   // ExceededTimeLimit
		9001,  // SocketException
		10107, // NotWritablePrimary
		11600, // InterruptedAtShutdown
		11602, // InterruptedDueToReplStateChange
		13435, // NotPrimaryNoSecondaryOk
		13436, // NotPrimaryOrSecondary
	}
}

const (
	storedCellsCap = 10000
	// storedCellsTTL bounds how long a remembered id is trusted without
	// asking the database: an operator may delete permalinks.
	storedCellsTTL = time.Hour
)

// storedCells is a bounded map of recently written cells to their ids,
// evicting the oldest first. Guarded by Queue.mu.
type storedCells struct {
	cap, next int
	ttl       time.Duration
	byDigest  map[[sha256.Size]byte]storedCell
	ring      [][sha256.Size]byte // insertion order, for eviction
}

type storedCell struct {
	id      string
	written time.Time
}

func newStoredCells(capacity int, ttl time.Duration) storedCells {
	return storedCells{cap: capacity, ttl: ttl, byDigest: make(map[[sha256.Size]byte]storedCell, capacity)}
}

func (c *storedCells) lookup(digest [sha256.Size]byte, now time.Time) (string, bool) {
	e, ok := c.byDigest[digest]
	if !ok || now.Sub(e.written) > c.ttl {
		return "", false
	}
	return e.id, true
}

// forgetID drops the cells remembered under id (their ring slots stay until reused).
func (c *storedCells) forgetID(id string) {
	for digest, e := range c.byDigest {
		if e.id == id {
			delete(c.byDigest, digest)
		}
	}
}

func (c *storedCells) add(digest [sha256.Size]byte, id string, now time.Time) {
	if _, ok := c.byDigest[digest]; ok {
		c.byDigest[digest] = storedCell{id: id, written: now}
		return
	}
	if len(c.ring) < c.cap {
		c.ring = append(c.ring, digest)
	} else {
		delete(c.byDigest, c.ring[c.next])
		c.ring[c.next] = digest
		c.next = (c.next + 1) % c.cap
	}
	c.byDigest[digest] = storedCell{id: id, written: now}
}
