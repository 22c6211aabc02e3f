package cluster

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestSessionClaimOwnerRelease: a session claimed on a is found owned by a from b and c (and
// from a itself), counts against its address, and once released is answered as ended, with its
// reason, everywhere.
func TestSessionClaimOwnerRelease(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	b := db.start(t, fastConfig(t, "b"))
	c := db.start(t, fastConfig(t, "c"))
	ctx := ctxT(t)

	for _, r := range []*Registry{a, b} {
		if _, err := r.Owner(ctx, "s1"); !errors.Is(err, ErrNoOwner) {
			t.Fatalf("%s: Owner of an unclaimed session = %v, want ErrNoOwner", r.ID(), err)
		}
	}
	must(t, a.ClaimSession(ctx, Claim{Session: "s1", Addr: "203.0.113.7"}))
	must(t, a.ClaimSession(ctx, Claim{Session: "s1", Addr: "203.0.113.7"})) // idempotent
	must(t, b.ClaimSession(ctx, Claim{Session: "s2", Addr: "203.0.113.7"}))
	if err := b.ClaimSession(ctx, Claim{Session: "s1"}); !errors.Is(err, ErrClaimed) {
		t.Fatalf("b claiming a's session = %v, want ErrClaimed", err)
	}

	for _, r := range []*Registry{a, c} {
		inst, err := r.Owner(ctx, "s1")
		must(t, err)
		if inst.ID != "a" || inst.URL != "http://127.0.0.1:1/a/" {
			t.Errorf("%s: Owner(s1) = %+v, want a", r.ID(), inst)
		}
	}
	// b's negative entry from before the claim expires within NegativeCacheTTL.
	eventually(t, 10*time.Second, "b to see s1's owner", func() bool {
		inst, err := b.Owner(ctx, "s1")
		return err == nil && inst.ID == "a"
	})

	n, err := c.SessionsOf(ctx, "203.0.113.7")
	must(t, err)
	if n != 2 {
		t.Errorf("SessionsOf = %d, want 2", n)
	}

	must(t, a.ReleaseSession(ctx, "s1", "idle timeout"))
	must(t, b.ReleaseSession(ctx, "s1", "not mine")) // does nothing
	c.Forget("s1")
	_, err = c.Owner(ctx, "s1")
	var ended *EndedError
	if !errors.As(err, &ended) || !errors.Is(err, ErrEnded) || errors.Is(err, ErrOwnerDead) {
		t.Fatalf("Owner of a released session = %v, want an EndedError, not ErrOwnerDead", err)
	}
	if ended.Reason != "idle timeout" || ended.Owner != "a" || ended.OwnerDied {
		t.Errorf("tombstone = %+v", ended)
	}
	if n, err := c.SessionsOf(ctx, "203.0.113.7"); err != nil || n != 1 {
		t.Errorf("SessionsOf after release = %d, %v; want 1", n, err)
	}
	// The owner answers the same, its own cache forgotten on release.
	if _, err := a.Owner(ctx, "s1"); !errors.Is(err, ErrEnded) {
		t.Errorf("a: Owner of its released session = %v, want ErrEnded", err)
	}
}

// TestSessionOwnerDeath: when the owner of a session dies without a word, the others answer its
// sessions as ended because the owner died, within an expiry and a heartbeat (polled here, with
// a generous deadline), even though they had its owner cached; its record and its sessions are
// swept, idempotently, by whichever survivor gets there first.
func TestSessionOwnerDeath(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	b := db.start(t, fastConfig(t, "b"))
	cfg := fastConfig(t, "c")
	cfg.OwnerCacheTTL = time.Hour // only the liveness check can tell c's cached owner is dead
	c := db.start(t, cfg)
	ctx := ctxT(t)

	must(t, a.ClaimSession(ctx, Claim{Session: "s1", Addr: "198.51.100.1"}))
	must(t, a.ClaimSession(ctx, Claim{Session: "s2"}))
	for _, r := range []*Registry{b, c} {
		if inst, err := r.Owner(ctx, "s1"); err != nil || inst.ID != "a" {
			t.Fatalf("%s: Owner(s1) = %v, %v", r.ID(), inst.ID, err)
		}
	}

	a.crash()
	eventually(t, 10*time.Second, "c to tell s1's owner is dead", func() bool {
		_, err := c.Owner(ctx, "s1")
		if err != nil && !errors.Is(err, ErrOwnerDead) {
			t.Fatalf("c: Owner(s1) = %v, want a or ErrOwnerDead", err)
		}
		return err != nil
	})
	for _, r := range []*Registry{b, c} {
		for _, s := range []string{"s1", "s2"} {
			_, err := r.Owner(ctx, s)
			var ended *EndedError
			if !errors.As(err, &ended) || !ended.OwnerDied || !strings.Contains(ended.Reason, "instance a") {
				t.Errorf("%s: Owner(%s) = %v, want the owner's death", r.ID(), s, err)
			}
		}
	}
	// Swept: a's record is gone and its sessions are tombstones that count against no cap.
	eventually(t, 10*time.Second, "a's record to be swept", func() bool {
		n, err := b.instances.CountDocuments(ctx, bson.D{{Key: "_id", Value: "a"}})
		must(t, err)
		return n == 0
	})
	if n, err := b.SessionsOf(ctx, "198.51.100.1"); err != nil || n != 0 {
		t.Errorf("SessionsOf a dead owner's address = %d, %v; want 0", n, err)
	}
	// Sweeping again changes nothing.
	dead, err := b.sweepInstance(ctx, instanceDoc{ID: "a", Epoch: "whatever"}, "again", false)
	if err != nil || !dead {
		t.Errorf("sweeping a gone instance again = %v, %v; want dead, nil", dead, err)
	}
	var doc sessionDoc
	must(t, b.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: "s1"}}).Decode(&doc))
	if doc.Reason == "again" || doc.Addr != "" {
		t.Errorf("tombstone rewritten or keeps the address: %+v", doc)
	}
}

// TestSessionOwnerAliveWhileViewStale: an owner that the view shows expired but that renewed
// its record is confirmed alive from the database, not declared dead.
func TestSessionOwnerAliveWhileViewStale(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	cfg := fastConfig(t, "b")
	cfg.Heartbeat, cfg.Expiry = time.Hour, 2*time.Hour // b's view never refreshes by itself
	b := db.start(t, cfg)
	ctx := ctxT(t)
	must(t, a.ClaimSession(ctx, Claim{Session: "s1"}))
	b.mu.Lock()
	inst := b.view["a"]
	inst.Expires = time.Unix(0, 0) // as a view of long ago would say
	b.view["a"] = inst
	b.mu.Unlock()
	got, err := b.Owner(ctx, "s1")
	if err != nil || got.ID != "a" {
		t.Fatalf("Owner with a stale view = %+v, %v; want a", got, err)
	}
}

// TestSessionNoDeathBeforeGrace: an instance that has not reached the database for a whole
// expiry does not declare another dead (after an outage all records have expired; the others
// must get a chance to renew theirs), and answers the owner instead.
func TestSessionNoDeathBeforeGrace(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	cfg := fastConfig(t, "b")
	cfg.Heartbeat, cfg.Expiry = 100*time.Millisecond, 30*time.Second // a long grace
	b := db.start(t, cfg)
	ctx := ctxT(t)
	must(t, a.ClaimSession(ctx, Claim{Session: "s1"}))
	a.crash()
	eventually(t, 10*time.Second, "a's record to expire", func() bool {
		insts, err := b.Instances(ctx)
		must(t, err)
		return len(insts) == 1
	})
	inst, err := b.Owner(ctx, "s1")
	if err != nil || inst.ID != "a" {
		t.Fatalf("Owner within the grace = %+v, %v; want a (unconfirmed)", inst, err)
	}
	if n, _ := b.instances.CountDocuments(ctx, bson.D{{Key: "_id", Value: "a"}}); n != 1 {
		t.Errorf("a's record swept within the grace")
	}
}

// TestSessionLostInstance: an instance whose record was swept while it was still running learns
// it at its next heartbeat, is told (OnLost) before it claims anything again, and registers anew.
func TestSessionLostInstance(t *testing.T) {
	db := startDB(t)
	var lost atomic.Int32
	cfg := fastConfig(t, "a")
	cfg.OnLost = func(context.Context) { lost.Add(1) }
	a := db.start(t, cfg)
	b := db.start(t, fastConfig(t, "b"))
	ctx := ctxT(t)
	must(t, a.ClaimSession(ctx, Claim{Session: "s1"}))
	oldEpoch := a.Self().epoch

	// As a sweeper would, had a missed its heartbeats.
	_, err := b.sweepInstance(ctx, instanceDoc{ID: "a", Epoch: oldEpoch}, "test: declared dead", true)
	must(t, err)
	eventually(t, 10*time.Second, "a to learn it was lost and register anew", func() bool {
		return lost.Load() == 1 && a.ClaimSession(ctx, Claim{Session: "s2"}) == nil
	})
	if a.Self().epoch == oldEpoch {
		t.Error("a registered again with its old epoch")
	}
	if _, err := b.Owner(ctx, "s1"); !errors.Is(err, ErrOwnerDead) {
		t.Errorf("Owner of the lost incarnation's session = %v, want ErrOwnerDead", err)
	}
	if inst, err := b.Owner(ctx, "s2"); err != nil || inst.ID != "a" {
		t.Errorf("Owner of the new incarnation's session = %+v, %v; want a", inst, err)
	}
}

// TestSessionOrphansAndTombstonesSwept: live sessions of an incarnation that has no record are
// ended, and tombstones older than Config.Tombstone are deleted.
func TestSessionOrphansAndTombstonesSwept(t *testing.T) {
	db := startDB(t)
	cfg := fastConfig(t, "a")
	cfg.Tombstone = 200 * time.Millisecond
	a := db.start(t, cfg)
	ctx := ctxT(t)
	old := a.Now().Add(-time.Minute)
	_, err := a.sessions.InsertOne(ctx, sessionDoc{ID: "orphan", Owner: "x", Epoch: "gone", Created: old})
	must(t, err)
	must(t, a.ClaimSession(ctx, Claim{Session: "mine"}))
	eventually(t, 10*time.Second, "the orphan to be ended", func() bool {
		_, err := a.Owner(ctx, "orphan")
		a.Forget("orphan")
		return errors.Is(err, ErrOwnerDead)
	})
	eventually(t, 10*time.Second, "its tombstone to be deleted", func() bool {
		_, err := a.Owner(ctx, "orphan")
		a.Forget("orphan")
		return errors.Is(err, ErrNoOwner)
	})
	if inst, err := a.Owner(ctx, "mine"); err != nil || inst.ID != "a" {
		t.Errorf("a live session was swept: %+v, %v", inst, err)
	}
}

func TestSessionIDChecks(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	ctx := ctxT(t)
	for _, id := range []string{"", strings.Repeat("x", 129), "bad\xff"} {
		if err := a.ClaimSession(ctx, Claim{Session: id}); err == nil {
			t.Errorf("ClaimSession(%q) accepted", id)
		}
		if _, err := a.Owner(ctx, id); !errors.Is(err, ErrNoOwner) {
			t.Errorf("Owner(%q) = %v, want ErrNoOwner", id, err)
		}
	}
	long := strings.Repeat("é", 400)
	must(t, a.ClaimSession(ctx, Claim{Session: "s"}))
	must(t, a.ReleaseSession(ctx, "s", long))
	_, err := a.Owner(ctx, "s")
	var ended *EndedError
	if !errors.As(err, &ended) || len(ended.Reason) > maxReason || !strings.HasPrefix(long, ended.Reason) {
		t.Errorf("long reason stored as %q", ended.Reason)
	}
}
