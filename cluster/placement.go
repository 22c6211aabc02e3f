package cluster

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// ErrNoPlacement: no other instance can take a new session at once.
var ErrNoPlacement = errors.New("cluster: no other instance has a ready kernel")

// PickPlacement chooses another instance to place a new session of kernel on, for when this one
// has no ready kernel of it: a live, not draining instance with one ready, picked at random in
// proportion to its ready count, so that a burst spreads. It reads the view of the last
// heartbeat (no query), and counts the kernel it hands out as taken until the next heartbeat
// refreshes the view, so one instance's burst does not all go to the same place on a stale count.
// A view older than two heartbeats (the database failing) places nothing.
func (r *Registry) PickPlacement(ctx context.Context, kernel string) (Instance, error) {
	if err := ctx.Err(); err != nil {
		return Instance{}, err
	}
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running || time.Since(r.viewAt) > 2*r.cfg.Heartbeat {
		return Instance{}, ErrNoPlacement
	}
	total := 0
	for id, inst := range r.view {
		if placeable(inst, id, r.cfg.InstanceID, kernel, now) {
			total += inst.Load.Ready[kernel]
		}
	}
	if total == 0 {
		return Instance{}, ErrNoPlacement
	}
	pick := rand.N(total)
	for id, inst := range r.view {
		if !placeable(inst, id, r.cfg.InstanceID, kernel, now) {
			continue
		}
		if pick -= inst.Load.Ready[kernel]; pick < 0 {
			// The view's maps are its own (instanceDoc.instance made them), and the caller gets
			// a copy.
			out := inst
			out.Load = inst.Load.clone()
			inst.Load.Ready[kernel]--
			return out, nil
		}
	}
	return Instance{}, ErrNoPlacement // not reached: total counts exactly these
}

func placeable(inst Instance, id, self, kernel string, now time.Time) bool {
	return id != self && !inst.Draining && inst.Expires.After(now) && inst.Load.Ready[kernel] > 0
}
