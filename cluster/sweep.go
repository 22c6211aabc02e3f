package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// maxOrphans bounds the orphaned sessions one sweep reads; each names its incarnation, and one
// update ends all of an incarnation's.
const maxOrphans = 1000

// Sweeping is how the dead leave the registry, with no TTL index to do it (the embedded FerretDB
// has none) and no coordinator: every live instance sweeps, and every step is a conditional
// write that any number of sweepers may repeat. An instance is dead once its record is gone; the
// one step that decides it is the deletion of an expired record, conditioned on its expiry and
// its epoch, so that a record renewed meanwhile survives and the instance learns nothing false.
// Its sessions are then turned into tombstones ("owner died"), and tombstones older than
// Config.Tombstone are deleted.

// sweepInstance declares the incarnation of doc dead if its record has expired (or at once with
// force, for a predecessor of this instance), and ends its sessions. It answers whether the
// incarnation is dead: false means it renewed its record in time.
func (r *Registry) sweepInstance(ctx context.Context, doc instanceDoc, why string, force bool) (bool, error) {
	filter := bson.D{{Key: "_id", Value: doc.ID}, {Key: "epoch", Value: doc.Epoch}}
	if !force {
		filter = append(filter, bson.E{Key: "expires", Value: bson.D{{Key: "$lt", Value: r.Now()}}})
	}
	res, err := r.instances.DeleteOne(ctx, filter)
	if err != nil {
		return false, fmt.Errorf("cluster: sweep instance %s: %w", doc.ID, err)
	}
	if res.DeletedCount == 0 {
		// Someone else swept it first, or it renewed its record: which one?
		err := r.instances.FindOne(ctx, bson.D{{Key: "_id", Value: doc.ID}, {Key: "epoch", Value: doc.Epoch}}).Err()
		switch {
		case err == nil:
			return false, nil
		case !errors.Is(err, mongo.ErrNoDocuments):
			return false, fmt.Errorf("cluster: sweep instance %s: %w", doc.ID, err)
		}
	} else {
		r.log.Warn().Str("dead", doc.ID).Str("url", doc.URL).Time("last_heartbeat", doc.Heartbeat).Str("why", why).
			Msg("cluster: instance declared dead")
	}
	// Also when another sweeper deleted the record: it may have died before this step.
	if err := r.tombstoneEpoch(ctx, doc.Epoch, why); err != nil {
		return true, err
	}
	return true, nil
}

// tombstoneEpoch ends, for everyone, the live sessions of one incarnation whose owner is gone.
func (r *Registry) tombstoneEpoch(ctx context.Context, epoch, why string) error {
	res, err := r.sessions.UpdateMany(ctx,
		bson.D{{Key: "epoch", Value: epoch}, {Key: "ended", Value: bson.D{{Key: "$exists", Value: false}}}},
		endedUpdate(r.Now(), why, true))
	if err != nil {
		return fmt.Errorf("cluster: end the sessions of a dead instance: %w", err)
	}
	if res.ModifiedCount > 0 {
		r.log.Info().Str("epoch", epoch).Int64("sessions", res.ModifiedCount).Str("why", why).
			Msg("cluster: sessions of a dead instance ended")
	}
	return nil
}

// endedUpdate turns a session record into a tombstone. The client's address goes: a tombstone
// counts against no cap, and the address is no longer needed.
func endedUpdate(now time.Time, why string, ownerDied bool) bson.D {
	set := bson.D{{Key: "ended", Value: now}, {Key: "reason", Value: why}}
	if ownerDied {
		set = append(set, bson.E{Key: "owner_died", Value: true})
	}
	return bson.D{{Key: "$set", Value: set}, {Key: "$unset", Value: bson.D{{Key: "addr", Value: ""}}}}
}

// deathReason is what the clients of a dead instance's sessions are told.
func deathReason(doc instanceDoc) string {
	return fmt.Sprintf("cellgate instance %s stopped responding (last heartbeat %s)", doc.ID, doc.Heartbeat.UTC().Format(time.RFC3339))
}

// sweepExpired declares dead the instances of the view whose records have expired.
func (r *Registry) sweepExpired(ctx context.Context) {
	if !r.mayDeclareDeath() {
		return
	}
	now := r.Now()
	var expired []Instance
	r.mu.Lock()
	for _, inst := range r.view {
		if inst.ID != r.cfg.InstanceID && !inst.Expires.After(now) {
			expired = append(expired, inst)
		}
	}
	r.mu.Unlock()
	for _, inst := range expired {
		doc := instanceDoc{ID: inst.ID, Epoch: inst.epoch, URL: inst.URL, Heartbeat: inst.Heartbeat}
		dead, err := r.sweepInstance(ctx, doc, deathReason(doc), false)
		if err != nil {
			r.log.Warn().Err(err).Msg("cluster: sweep failed; retrying at the next heartbeat")
			continue
		}
		if dead {
			r.mu.Lock()
			if v, ok := r.view[inst.ID]; ok && v.epoch == inst.epoch {
				delete(r.view, inst.ID)
			}
			r.mu.Unlock()
		}
	}
}

// sweepOrphans ends the live sessions whose incarnation has no record (its record was swept by
// a sweeper that died before ending them, or deleted by hand), and deletes old tombstones.
func (r *Registry) sweepOrphans(ctx context.Context) {
	// The incarnations are those of the view just read. An instance registers before it claims,
	// so a session claimed an expiry before the read has its incarnation in the view unless it
	// is gone; younger sessions wait for the next sweep. (Not a distinct of the sessions' epochs:
	// the embedded FerretDB refuses distinct with a time limit, which the driver adds from ctx.)
	r.mu.Lock()
	live := make([]string, 0, len(r.view))
	for _, inst := range r.view {
		live = append(live, inst.epoch)
	}
	r.mu.Unlock()
	now := r.Now()
	cur, err := r.sessions.Find(ctx, bson.D{
		{Key: "ended", Value: bson.D{{Key: "$exists", Value: false}}},
		{Key: "epoch", Value: bson.D{{Key: "$nin", Value: live}}},
		{Key: "created", Value: bson.D{{Key: "$lt", Value: now.Add(-r.cfg.Expiry)}}},
	}, options.Find().SetProjection(bson.D{{Key: "owner", Value: 1}, {Key: "epoch", Value: 1}}).SetLimit(maxOrphans))
	if err != nil {
		r.log.Warn().Err(err).Msg("cluster: look for orphaned sessions failed")
		return
	}
	var orphans []sessionDoc
	if err := cur.All(ctx, &orphans); err != nil {
		r.log.Warn().Err(err).Msg("cluster: look for orphaned sessions failed")
		return
	}
	done := map[string]bool{}
	for _, o := range orphans {
		if !done[o.Epoch] {
			done[o.Epoch] = true
			if err := r.tombstoneEpoch(ctx, o.Epoch, fmt.Sprintf("cellgate instance %s is gone", o.Owner)); err != nil {
				r.log.Warn().Err(err).Msg("cluster: sweep of orphaned sessions failed")
			}
		}
	}
	del, err := r.sessions.DeleteMany(ctx, bson.D{{Key: "ended", Value: bson.D{{Key: "$lt", Value: now.Add(-r.cfg.Tombstone)}}}})
	if err != nil {
		r.log.Warn().Err(err).Msg("cluster: delete old tombstones failed")
		return
	}
	if del.DeletedCount > 0 {
		r.log.Debug().Int64("tombstones", del.DeletedCount).Msg("cluster: old tombstones deleted")
	}
}
