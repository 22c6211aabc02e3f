package gateway

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/gateway/session"
)

// Why a session cannot start.
var (
	errCapacity  = errors.New("server at capacity")
	errClientCap = errors.New("too many kernels for this client")
	errDraining  = errors.New("server is shutting down")
)

// registry holds the live sessions, counts them per remote address and
// per client key for the caps, keeps each address's kernel time, and keeps
// tombstones of ended ones.
type registry struct {
	maxPerAddr, maxPerClient int
	errors                   *prometheus.CounterVec
	budget                   kernelTime
	now                      func() time.Time

	mu       sync.Mutex
	live     map[string]*session.Session
	perAddr  map[string]int // live sessions and starts in progress
	perKey   map[string]int // the same, per client key (client_id)
	used     map[string]*addrTime
	starts   int // reservations since the last sweep of used
	ended    tombstones
	draining bool
}

func newRegistry(maxPerAddr, maxPerClient int, budget kernelTime, errorCount *prometheus.CounterVec) *registry {
	return &registry{maxPerAddr: maxPerAddr, maxPerClient: maxPerClient, errors: errorCount, budget: budget, now: time.Now,
		live: map[string]*session.Session{}, perAddr: map[string]int{}, perKey: map[string]int{}, used: map[string]*addrTime{}}
}

// reserve takes a slot under the per-client caps before the (slow) lease,
// so that concurrent requests cannot all pass the check; release gives it
// back when the session does not start. Call release at most once: a
// session that starts gives its slot back through forget instead.
func (r *registry) reserve(remote, clientKey string) (release func(), err error) {
	return r.reserveWith(remote, clientKey, 0)
}

// reserveWith is reserve where other instances of a cluster hold elsewhere
// sessions of remote, which count against the per-address cap.
func (r *registry) reserveWith(remote, clientKey string, elsewhere int) (release func(), err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining {
		return nil, errDraining
	}
	if n := r.perAddr[remote] + elsewhere; n >= r.maxPerAddr {
		r.errors.WithLabelValues("client_cap").Inc()
		return nil, fmt.Errorf("%w: %d kernels for address %s", errClientCap, n, remote)
	}
	if n := r.perKey[clientKey]; clientKey != "" && n >= r.maxPerClient {
		r.errors.WithLabelValues("client_cap").Inc()
		return nil, fmt.Errorf("%w: %d kernels for client %s", errClientCap, n, clientKey)
	}
	now := r.now()
	if err := r.budget.check(r.settleLocked(remote, now), r.perAddr[remote], remote); err != nil {
		r.errors.WithLabelValues("kernel_time").Inc()
		return nil, err
	}
	if r.starts++; r.starts >= sweepEvery {
		r.sweepLocked(now)
	}
	r.perAddr[remote]++
	if clientKey != "" {
		r.perKey[clientKey]++
	}
	return func() { r.mu.Lock(); r.unreserveLocked(remote, clientKey); r.mu.Unlock() }, nil
}

func (r *registry) unreserveLocked(remote, clientKey string) {
	r.settleLocked(remote, r.now())
	if r.perAddr[remote]--; r.perAddr[remote] <= 0 {
		delete(r.perAddr, remote)
	}
	if clientKey == "" {
		return
	}
	if r.perKey[clientKey]--; r.perKey[clientKey] <= 0 {
		delete(r.perKey, clientKey)
	}
}

// settleLocked brings remote's kernel time up to now, at the number of
// sessions it has held since it was last settled, and returns it. Call it
// before that number changes.
func (r *registry) settleLocked(remote string, now time.Time) *addrTime {
	a := r.used[remote]
	if a == nil {
		a = &addrTime{left: r.budget.perAddr.Seconds(), at: now}
		r.used[remote] = a
	}
	r.budget.settle(a, r.perAddr[remote], now)
	return a
}

// sweepLocked forgets the addresses that hold nothing and have their whole
// kernel time back, so the map holds only those seen within a window.
func (r *registry) sweepLocked(now time.Time) {
	r.starts = 0
	for remote, a := range r.used {
		if r.perAddr[remote] == 0 {
			if r.budget.settle(a, 0, now); a.left >= r.budget.perAddr.Seconds() {
				delete(r.used, remote)
			}
		}
	}
}

// kernelTimeLeft is remote's kernel time now (for tests).
func (r *registry) kernelTimeLeft(remote string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Duration(r.settleLocked(remote, r.now()).left * float64(time.Second))
}

// add registers a session whose slot is reserved; when the server is
// draining it gives the slot back and refuses.
func (r *registry) add(sess *session.Session) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining {
		r.unreserveLocked(sess.Remote(), sess.ClientKey())
		return errDraining
	}
	r.live[sess.ID()] = sess
	return nil
}

// forget drops an ended session, keeping a tombstone so that a client
// between requests learns why it ended.
func (r *registry) forget(sess *session.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live[sess.ID()] != sess {
		return
	}
	delete(r.live, sess.ID())
	r.unreserveLocked(sess.Remote(), sess.ClientKey())
	r.ended.add(sess.ID(), tombstone{api: sess.API(), reason: sess.Reason(), last: sess.Replay().Last(), at: time.Now()})
}

// knows tells whether id is a live session here or a recent tombstone.
func (r *registry) knows(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live[id] != nil {
		return true
	}
	t, ok := r.ended.byID[id]
	return ok && time.Since(t.at) < tombstoneTTL
}

// addForeign keeps a tombstone of a session that ended on another
// instance (or whose instance died), so that it is answered here as the
// owner's own tombstone would be.
func (r *registry) addForeign(id string, api session.API, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live[id] != nil {
		return
	}
	r.ended.add(id, tombstone{api: api, reason: reason, last: foreignLast, foreign: true, at: time.Now()})
}

// liveOf counts the live sessions of remote here.
func (r *registry) liveOf(remote string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, sess := range r.live {
		if sess.Remote() == remote {
			n++
		}
	}
	return n
}

// get returns a live session of any API (for tests and internal use;
// routes use the API-scoped lookups).
func (r *registry) get(id string) *session.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.live[id]
}

// getAPI returns a live session of api only: a kernel id must not be a
// way around the other API's rules (the Jupyter API's token).
func (r *registry) getAPI(id string, api session.API) *session.Session {
	if sess := r.get(id); sess != nil && sess.API() == api {
		return sess
	}
	return nil
}

// all returns the live sessions.
func (r *registry) all() []*session.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session.Session, 0, len(r.live))
	for _, sess := range r.live {
		out = append(out, sess)
	}
	return out
}

func (r *registry) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.live)
}

func (r *registry) isDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// drain refuses new sessions from now on and returns the live ones.
func (r *registry) drain() []*session.Session {
	r.mu.Lock()
	r.draining = true
	r.mu.Unlock()
	return r.all()
}

// Tombstones of ended sessions are kept this long, and this many at most.
const (
	tombstoneTTL = 5 * time.Minute
	maxTombstone = 10000
)

// tombstone is what is kept of an ended session.
type tombstone struct {
	api    session.API
	reason string
	last   uint64
	at     time.Time
	// foreign: it ended on another instance (last is foreignLast).
	foreign bool
}

// tombstones is a bounded, time-ordered record of ended sessions.
type tombstones struct {
	byID  map[string]tombstone
	order []string // oldest first
}

func (t *tombstones) add(id string, ts tombstone) {
	if t.byID == nil {
		t.byID = map[string]tombstone{}
	}
	t.prune(ts.at)
	for len(t.order) >= maxTombstone {
		delete(t.byID, t.order[0])
		t.order = t.order[1:]
	}
	t.byID[id] = ts
	t.order = append(t.order, id)
}

// prune drops tombstones older than the TTL; ids are in end order.
func (t *tombstones) prune(now time.Time) {
	for len(t.order) > 0 {
		old, ok := t.byID[t.order[0]]
		if ok && now.Sub(old.at) < tombstoneTTL {
			return
		}
		delete(t.byID, t.order[0])
		t.order = t.order[1:]
	}
}

// tombstone returns what is kept of an ended session, if it ended recently.
func (r *registry) tombstone(id string) (tombstone, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.ended.byID[id]
	if !ok || time.Since(t.at) >= tombstoneTTL {
		return tombstone{}, false
	}
	return t, true
}
