package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// What an owner lookup can answer besides an owner.
var (
	// ErrNoOwner: no instance owns the session, nor did one recently: an unknown id, or a
	// session that ended longer ago than Config.Tombstone. The gateway answers as for an unknown
	// kernel.
	ErrNoOwner = errors.New("cluster: no instance owns this session")
	// ErrEnded: the session ended (an *EndedError says how). The gateway answers as for an ended
	// session of its own: iopub status dead with the reason, poll ended: true.
	ErrEnded = errors.New("cluster: session ended")
	// ErrOwnerDead: the session ended because its owner died or stopped; it is also ErrEnded.
	ErrOwnerDead = errors.New("cluster: session's owner is dead")
	// ErrClaimed: ClaimSession found the id owned by another instance.
	ErrClaimed = errors.New("cluster: session claimed by another instance")
)

// EndedError is a session that has ended, from its tombstone.
type EndedError struct {
	Session string
	Owner   string // the instance that owned it
	Reason  string
	// OwnerDied is set when it ended because its owner died or stopped, not by the owner's doing.
	OwnerDied bool
	At        time.Time
}

func (e *EndedError) Error() string {
	if e.OwnerDied {
		return fmt.Sprintf("cluster: session %s ended: its owner %s is gone: %s", e.Session, e.Owner, e.Reason)
	}
	return fmt.Sprintf("cluster: session %s ended on %s: %s", e.Session, e.Owner, e.Reason)
}

// Is makes every EndedError ErrEnded, and those of dead owners ErrOwnerDead.
func (e *EndedError) Is(target error) bool {
	return target == ErrEnded || (e.OwnerDied && target == ErrOwnerDead)
}

const (
	maxSessionID = 128
	// A reason longer than this is cut: it is shown to clients, not a log.
	maxReason = 512
)

func checkSessionID(id string) error {
	// The embedded FerretDB would store invalid UTF-8 altered (storage/store.go).
	if id == "" || len(id) > maxSessionID || !utf8.ValidString(id) {
		return fmt.Errorf("cluster: invalid session id %q", id)
	}
	return nil
}

// Claim is what is recorded of a new session.
type Claim struct {
	Session string
	// Addr is the client's address as the per-address caps count it (empty: not counted).
	Addr string
}

// ClaimSession records this instance as the owner of a new session. Call it before the session's
// id is given to anyone (the POST /kernel answer), so that no instance can look the id up before
// it is claimed. Claiming again an id this incarnation owns is harmless; an id another owns is
// ErrClaimed.
func (r *Registry) ClaimSession(ctx context.Context, c Claim) error {
	if err := checkSessionID(c.Session); err != nil {
		return err
	}
	epoch, err := r.current()
	if err != nil {
		return err
	}
	doc := sessionDoc{ID: c.Session, Owner: r.cfg.InstanceID, Epoch: epoch, Addr: c.Addr, Created: r.Now()}
	_, err = r.sessions.InsertOne(ctx, doc)
	if err == nil {
		r.cache.put(c.Session, ownerEntry{known: true, owner: doc.Owner, epoch: epoch}, time.Now())
		return nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("cluster: claim session %s: %w", c.Session, err)
	}
	var old sessionDoc
	if err := r.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: c.Session}}).Decode(&old); err != nil {
		return fmt.Errorf("cluster: claim session %s: %w", c.Session, err)
	}
	if old.Owner == doc.Owner && old.Epoch == epoch && old.Ended == nil {
		return nil
	}
	return fmt.Errorf("%w: %s is %s's", ErrClaimed, c.Session, old.Owner)
}

// ReleaseSession records that a session of this instance ended, and why: its record becomes a
// tombstone that every instance answers the session's clients from, until Config.Tombstone has
// passed. Releasing an unknown, ended or foreign session does nothing.
func (r *Registry) ReleaseSession(ctx context.Context, sessionID, reason string) error {
	r.cache.forget(sessionID)
	if checkSessionID(sessionID) != nil {
		return nil
	}
	_, err := r.sessions.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: sessionID}, {Key: "owner", Value: r.cfg.InstanceID}, {Key: "ended", Value: bson.D{{Key: "$exists", Value: false}}}},
		endedUpdate(r.Now(), cutReason(reason), false))
	if err != nil {
		return fmt.Errorf("cluster: release session %s: %w", sessionID, err)
	}
	return nil
}

// cutReason cuts reason to maxReason bytes, on a character boundary.
func cutReason(reason string) string {
	if len(reason) <= maxReason {
		return reason
	}
	cut := maxReason
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut]
}

// SessionsOf counts the live sessions claimed with address addr across the cluster, for the
// per-address cap. It lags behind sessions being started elsewhere at the same moment (see the
// package documentation for the slack this leaves).
func (r *Registry) SessionsOf(ctx context.Context, addr string) (int, error) {
	if addr == "" {
		return 0, nil // claims without an address are not counted
	}
	n, err := r.sessions.CountDocuments(ctx, bson.D{{Key: "addr", Value: addr}, {Key: "ended", Value: bson.D{{Key: "$exists", Value: false}}}})
	if err != nil {
		return 0, fmt.Errorf("cluster: count the sessions of %s: %w", addr, err)
	}
	return int(n), nil
}

// Owner finds the instance that owns a live session: this one (check the gateway's own sessions
// first), or another to forward to. Otherwise the error is ErrNoOwner, or an *EndedError (ErrEnded,
// and ErrOwnerDead when its owner died), or the database's. Lookups are cached (Config
// OwnerCacheTTL, NegativeCacheTTL); the owner's liveness is checked on every call against the
// view of the instances, and a dead verdict is only given once the database confirms it, so a
// client of a dead instance is told its session ended within an expiry and a heartbeat, and a
// slow view never kills a live session.
func (r *Registry) Owner(ctx context.Context, sessionID string) (Instance, error) {
	if checkSessionID(sessionID) != nil {
		return Instance{}, ErrNoOwner
	}
	e, ok := r.cache.get(sessionID, time.Now())
	if !ok {
		var err error
		if e, err = r.lookupSession(ctx, sessionID); err != nil {
			return Instance{}, err
		}
		r.cache.put(sessionID, e, time.Now())
	}
	switch {
	case !e.known:
		return Instance{}, ErrNoOwner
	case e.ended != nil:
		return Instance{}, e.ended
	}
	if self := r.Self(); e.owner == self.ID && e.epoch == self.epoch {
		return self, nil
	}
	if inst, alive := r.viewed(e.owner, e.epoch, r.Now()); alive {
		return inst, nil
	}
	return r.confirmOwner(ctx, sessionID, e)
}

// Forget drops what the owner cache holds of a session, e.g. when its owner answered that it
// does not know it.
func (r *Registry) Forget(sessionID string) { r.cache.forget(sessionID) }

// lookupSession reads a session's record.
func (r *Registry) lookupSession(ctx context.Context, id string) (ownerEntry, error) {
	var doc sessionDoc
	err := r.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return ownerEntry{}, nil
	case err != nil:
		return ownerEntry{}, fmt.Errorf("cluster: look up session %s: %w", id, err)
	}
	e := ownerEntry{known: true, owner: doc.Owner, epoch: doc.Epoch}
	if doc.Ended != nil {
		e.ended = &EndedError{Session: id, Owner: doc.Owner, Reason: doc.Reason, OwnerDied: doc.OwnerDied, At: *doc.Ended}
	}
	return e, nil
}

// confirmOwner decides, from the database, about an owner the view does not show alive: the view
// may be a heartbeat old, or the owner's record late, or the owner dead.
func (r *Registry) confirmOwner(ctx context.Context, sessionID string, e ownerEntry) (Instance, error) {
	var doc instanceDoc
	err := r.instances.FindOne(ctx, bson.D{{Key: "_id", Value: e.owner}}).Decode(&doc)
	var why string
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		why = fmt.Sprintf("cellgate instance %s is gone", e.owner)
	case err != nil:
		return Instance{}, fmt.Errorf("cluster: look up instance %s: %w", e.owner, err)
	case doc.Epoch != e.epoch:
		why = fmt.Sprintf("cellgate instance %s restarted", e.owner)
	case doc.Expires.After(r.Now()):
		inst := doc.instance()
		r.setViewed(inst)
		return inst, nil
	case !r.mayDeclareDeath():
		// This instance cannot tell yet whether the owner or itself was cut off: answer the
		// owner, and let forwarding to it fail if it is gone.
		return doc.instance(), nil
	default:
		why = deathReason(doc)
		dead, err := r.sweepInstance(ctx, doc, why, false)
		if err != nil {
			return Instance{}, err
		}
		if !dead {
			// It renewed its record just now.
			return doc.instance(), nil
		}
	}
	// The owner is gone: end its sessions (idempotent) and answer from the session's tombstone,
	// so that every instance tells the client the same.
	if err := r.tombstoneEpoch(ctx, e.epoch, why); err != nil {
		return Instance{}, err
	}
	fresh, err := r.lookupSession(ctx, sessionID)
	if err != nil {
		return Instance{}, err
	}
	if fresh.ended == nil {
		// Claimed meanwhile by someone else? Not by this dead owner, anyway.
		fresh.ended = &EndedError{Session: sessionID, Owner: e.owner, Reason: why, OwnerDied: true, At: r.Now()}
	}
	r.cache.put(sessionID, fresh, time.Now())
	return Instance{}, fresh.ended
}
