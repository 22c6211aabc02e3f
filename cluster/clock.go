package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// dbClock estimates the database server's clock, so that every time written to or compared with
// the registry (heartbeats, expiries, tombstones) is read off one clock: an instance whose own
// clock is a few seconds off must neither look dead to the others nor declare them dead. The
// offset is sampled from hello's localTime; of the last few samples, the one with the shortest
// round trip (the least uncertain) is used.
type dbClock struct {
	mu      sync.Mutex
	samples [clockSamples]clockSample
	next    int
	offset  time.Duration
}

type clockSample struct {
	offset time.Duration
	rtt    time.Duration
	ok     bool
}

const (
	clockSamples = 8
	// A sample whose round trip took longer says too little (±rtt/2) to use.
	maxClockRTT = 2 * time.Second
)

// now is the database server's time, as estimated.
func (c *dbClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// sample asks the server its time and updates the estimate.
func (c *dbClock) sample(ctx context.Context, db *mongo.Database) error {
	var reply struct {
		LocalTime time.Time `bson:"localTime"`
	}
	start := time.Now()
	if err := db.RunCommand(ctx, bson.D{{Key: "hello", Value: int32(1)}}).Decode(&reply); err != nil {
		return fmt.Errorf("cluster: read the database's clock: %w", err)
	}
	rtt := time.Since(start)
	if reply.LocalTime.IsZero() || rtt > maxClockRTT {
		return nil
	}
	// The server read its clock somewhere in the round trip; the middle is the best guess.
	mid := start.Add(rtt / 2)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.samples[c.next] = clockSample{offset: reply.LocalTime.Sub(mid), rtt: rtt, ok: true}
	c.next = (c.next + 1) % clockSamples
	best := clockSample{}
	for _, s := range c.samples {
		if s.ok && (!best.ok || s.rtt < best.rtt) {
			best = s
		}
	}
	c.offset = best.offset
	return nil
}
