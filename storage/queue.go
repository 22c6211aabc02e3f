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
	// still unwritten when Close's deadline passed.
	ErrQueueClosed = errors.New("storage: permalink queue closed")
	// ErrGaveUp is passed to OnDropped when a permalink stayed unwritten for QueueConfig.MaxPending.
	ErrGaveUp = errors.New("storage: gave up writing permalink")
)

// QueueConfig configures NewQueue. Zero fields take the defaults given.
type QueueConfig struct {
	// Capacity bounds the unwritten permalinks kept in memory. Default 10000.
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

	// OnDropped is called when a permalink whose id was handed out will not be stored: the server
	// rejected it, MaxPending passed, or Close's deadline passed (err wraps ErrQueueClosed or
	// ErrGaveUp, or is the server's error). It runs on a queue goroutine and must not block.
	OnDropped func(id string, err error)
	// OnMoved is called when the id handed out was found, on writing, to belong to a different
	// cell already stored (a hash prefix collision, about one in 10^4 after 10^9 permalinks); the
	// cell was stored under newID instead. It runs on a queue goroutine and must not block.
	OnMoved func(oldID, newID string)

	Logger zerolog.Logger
}

// Queue is a write-behind buffer in front of Permalinks: Enqueue hands out the id at once and
// never waits for the database; workers write in the background, retrying with backoff while the
// database is slow or down. Until a permalink is written, Get serves it from memory, so an id
// handed to a client is readable at once.
type Queue struct {
	permalinks *Permalinks
	cfg        QueueConfig
	log        zerolog.Logger

	mu      sync.Mutex
	pending map[string]*queuedCell // by handed-out id
	closed  bool

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

	// Gets served from the queue; guarded by Queue.mu.
	requests   int64
	lastAccess time.Time
}

// NewQueue starts the queue's workers. They stop when Close returns or, without draining, when
// ctx is cancelled.
func NewQueue(ctx context.Context, permalinks *Permalinks, cfg QueueConfig) *Queue {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 10000
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = time.Hour
	}
	workerCtx, cancel := context.WithCancel(ctx)
	q := &Queue{
		permalinks: permalinks,
		cfg:        cfg,
		log:        cfg.Logger.With().Str("component", "permalink-queue").Logger(),
		pending:    make(map[string]*queuedCell),
		order:      make(chan *queuedCell, cfg.Capacity),
		draining:   make(chan struct{}),
		ctx:        workerCtx,
		cancel:     cancel,
	}
	q.workers.Add(cfg.Workers)
	for range cfg.Workers {
		go q.work()
	}
	return q
}

// Enqueue validates cell and returns its id without waiting for the database. It fails only for
// an invalid cell (ErrInvalidCell), a full queue (ErrQueueFull) or a closed one (ErrQueueClosed).
func (q *Queue) Enqueue(cell Cell) (string, error) {
	if err := q.permalinks.Validate(cell); err != nil {
		return "", err
	}
	digest := q.permalinks.digest(cell)
	now := time.Now()

	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.ctx.Err() != nil {
		return "", ErrQueueClosed
	}
	for attempt := range idAttempts {
		id := idCandidate(digest, attempt)
		if other, ok := q.pending[id]; ok {
			if other.digest == digest {
				return id, nil // same cell still pending
			}
			continue // a different pending cell has this id: take the next one, as store would
		}
		if len(q.pending) >= q.cfg.Capacity {
			return "", ErrQueueFull
		}
		item := &queuedCell{id: id, attempt: attempt, cell: cell, digest: digest, enqueued: now}
		q.pending[id] = item
		q.order <- item // cannot block: len(order) <= len(pending) < cap(order)
		return id, nil
	}
	return "", errIDSpaceExhausted
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

// Len is the number of permalinks not yet written.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// Close stops accepting permalinks and keeps writing the pending ones until they are all written
// or ctx ends; then it stops the workers, reports the unwritten ones to OnDropped, and returns an
// error counting them. Safe to call more than once.
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

		q.mu.Lock()
		lost := make([]string, 0, len(q.pending))
		for id := range q.pending {
			lost = append(lost, id)
		}
		clear(q.pending)
		q.mu.Unlock()
		if len(lost) > 0 {
			q.log.Error().Int("dropped", len(lost)).Msg("permalink queue closed before writing everything")
		}
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
// MaxPending ends it, or the queue is stopped (the item then stays pending for Close to report).
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
			q.forget(item)
			q.dropped(item.id, err)
			return
		}
		if time.Since(item.enqueued) > q.cfg.MaxPending {
			q.forget(item)
			q.dropped(item.id, fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, failures+1, err))
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
	q.mu.Lock()
	delete(q.pending, item.id)
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

func (q *Queue) forget(item *queuedCell) {
	q.mu.Lock()
	delete(q.pending, item.id)
	q.mu.Unlock()
}

func (q *Queue) dropped(id string, err error) {
	q.log.Error().Err(err).Str("id", id).Msg("permalink dropped")
	if q.cfg.OnDropped != nil {
		q.cfg.OnDropped(id, err)
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
