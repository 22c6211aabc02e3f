package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// ErrNotRunning is returned by calls that need this instance registered: before Start, after
// Close, and while it re-registers after being declared dead (Config.OnLost).
var ErrNotRunning = errors.New("cluster: instance not registered")

// Registry is this instance's membership of the cluster: its own record, which it renews, the
// records of the sessions it owns, and a view of the other instances, refreshed with each
// heartbeat. All its methods are safe for concurrent use.
type Registry struct {
	cfg       Config
	db        *mongo.Database
	instances *mongo.Collection
	sessions  *mongo.Collection
	log       zerolog.Logger
	clock     dbClock
	cache     *ownerCache

	mu           sync.Mutex
	epoch        string
	started      time.Time // on the database's clock
	running      bool      // registered: between Start and Close, but for a lost spell
	lost         bool
	closed       bool
	loopStarted  bool
	draining     bool
	load         Load
	published    []string // Load.readyFlags last written
	lastWrite    time.Time
	view         map[string]Instance
	viewAt       time.Time // local clock
	healthySince time.Time // local clock; zero while the database is failing us
	lastCleanup  time.Time // local clock
	failing      bool      // the last heartbeat failed (to log a streak once)

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// Open prepares the registry in db: it checks the configuration, creates the indexes and reads
// the database's clock. Nothing is registered until Start.
func Open(ctx context.Context, db *mongo.Database, cfg Config) (*Registry, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Registry{
		cfg:       cfg,
		db:        db,
		instances: db.Collection(instancesCollection),
		sessions:  db.Collection(sessionsCollection),
		log:       cfg.Log.With().Str("component", "cluster").Str("instance", cfg.InstanceID).Logger(),
		cache:     newOwnerCache(cfg.OwnerCacheSize, cfg.OwnerCacheTTL, cfg.NegativeCacheTTL),
		view:      map[string]Instance{},
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	if err := r.createIndexes(ctx); err != nil {
		return nil, err
	}
	if err := r.clock.sample(ctx, db); err != nil {
		return nil, err
	}
	r.healthySince = time.Now()
	return r, nil
}

// createIndexes creates, idempotently, what the queries need. Nothing here can be a TTL or a
// partial index (the embedded FerretDB has neither): expiry is swept (sweep.go).
func (r *Registry) createIndexes(ctx context.Context) error {
	specs := []struct {
		coll *mongo.Collection
		key  string
	}{
		{r.instances, "expires"},
		{r.sessions, "epoch"},
		{r.sessions, "addr"},
		{r.sessions, "ended"},
	}
	for _, s := range specs {
		if _, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: s.key, Value: int32(1)}}}); err != nil {
			return fmt.Errorf("cluster: create index on %s.%s: %w", s.coll.Name(), s.key, err)
		}
	}
	return nil
}

// ID is this instance's id.
func (r *Registry) ID() string { return r.cfg.InstanceID }

// Now is the database server's time as this instance estimates it: the one clock of the
// registry. Give it to the Forwarder and the Authenticator too, so that the timestamps of
// forwarded requests are read off it and hosts' clocks need not agree.
func (r *Registry) Now() time.Time { return r.clock.now() }

// Start registers this instance and starts its heartbeat. Call it once the instance serves its
// AdvertiseURL. If a live record holds the same id with another URL (another instance, or a
// predecessor that has not expired yet), Start waits for it to expire, within ctx; a record with
// the same id and URL is a crashed predecessor and is taken over at once, its sessions ended.
func (r *Registry) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.closed || r.loopStarted {
		r.mu.Unlock()
		return errors.New("cluster: Start called twice or after Close")
	}
	r.mu.Unlock()
	for {
		ok, err := r.tryRegister(ctx)
		if err != nil {
			return err
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: instance id %q is held by a live instance: %w", r.cfg.InstanceID, ctx.Err())
		case <-time.After(r.cfg.Heartbeat):
		}
	}
	if err := r.refreshView(ctx); err != nil {
		r.log.Warn().Err(err).Msg("cluster: first read of the other instances failed; the heartbeat retries")
	}
	r.mu.Lock()
	r.loopStarted = true
	r.mu.Unlock()
	go r.loop()
	return nil
}

// tryRegister inserts a record of a new incarnation of this instance. It answers false, without
// error, while a live record of another process holds the id.
func (r *Registry) tryRegister(ctx context.Context) (bool, error) {
	for attempt := 0; ; attempt++ {
		now := r.Now()
		r.mu.Lock()
		r.epoch, r.started = randomHex(8), now
		doc := r.docLocked(now)
		r.mu.Unlock()
		_, err := r.instances.InsertOne(ctx, doc)
		if err == nil {
			r.mu.Lock()
			r.running, r.lost, r.lastWrite = true, false, time.Now()
			r.published = doc.instance().Load.readyFlags()
			r.mu.Unlock()
			r.log.Info().Str("url", doc.URL).Str("epoch", doc.Epoch).Msg("cluster: instance registered")
			return true, nil
		}
		if !mongo.IsDuplicateKeyError(err) || attempt > 0 {
			return false, fmt.Errorf("cluster: register instance %s: %w", r.cfg.InstanceID, err)
		}
		var old instanceDoc
		switch err := r.instances.FindOne(ctx, bson.D{{Key: "_id", Value: r.cfg.InstanceID}}).Decode(&old); {
		case errors.Is(err, mongo.ErrNoDocuments):
			continue // swept meanwhile
		case err != nil:
			return false, fmt.Errorf("cluster: register instance %s: %w", r.cfg.InstanceID, err)
		}
		force := old.URL == r.cfg.AdvertiseURL
		if !force && (old.Expires.After(now) || !r.mayDeclareDeath()) {
			r.log.Warn().Str("held_by", old.URL).Time("expires", old.Expires).
				Msg("cluster: instance id held by a live record; waiting for it to expire")
			return false, nil
		}
		why := fmt.Sprintf("cellgate instance %s restarted", old.ID)
		if !force {
			why = deathReason(old)
		}
		if _, err := r.sweepInstance(ctx, old, why, force); err != nil {
			return false, err
		}
	}
}

// docLocked is this instance's record as of now.
func (r *Registry) docLocked(now time.Time) instanceDoc {
	return instanceDoc{
		ID: r.cfg.InstanceID, Epoch: r.epoch, URL: r.cfg.AdvertiseURL, Started: r.started,
		Draining: r.draining, Sessions: r.load.Sessions, Ready: readyDocs(r.load.Ready),
		Heartbeat: now, Expires: now.Add(r.cfg.Expiry),
	}
}

// Self is this instance's own record as it stands locally.
func (r *Registry) Self() Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst := r.docLocked(r.clock.now()).instance()
	return inst
}

// current is this incarnation's epoch, or ErrNotRunning.
func (r *Registry) current() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return "", ErrNotRunning
	}
	return r.epoch, nil
}

// SetDraining marks this instance draining (or not) in its record at once: the others stop
// placing new sessions here, and its existing sessions are still forwarded to it.
func (r *Registry) SetDraining(ctx context.Context, draining bool) error {
	r.mu.Lock()
	r.draining = draining
	running, epoch := r.running, r.epoch
	r.mu.Unlock()
	if !running {
		return nil // the next registration carries it
	}
	_, err := r.instances.UpdateOne(ctx, bson.D{{Key: "_id", Value: r.cfg.InstanceID}, {Key: "epoch", Value: epoch}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "draining", Value: draining}}}})
	if err != nil {
		return fmt.Errorf("cluster: mark instance draining=%v: %w", draining, err)
	}
	return nil
}

// SetLoad records this instance's load. It is written with the next heartbeat, or sooner (within
// a quarter heartbeat, at most 200 ms) when a kernel name's ready count goes from zero to some or back, as
// placement elsewhere depends on that.
func (r *Registry) SetLoad(l Load) {
	l = l.clone()
	r.mu.Lock()
	r.load = l
	changed := !slices.Equal(l.readyFlags(), r.published)
	r.mu.Unlock()
	if changed {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Instances reads the live instances (this one included, draining ones too) from the database,
// ordered by id.
func (r *Registry) Instances(ctx context.Context) ([]Instance, error) {
	cur, err := r.instances.Find(ctx, bson.D{{Key: "expires", Value: bson.D{{Key: "$gt", Value: r.Now()}}}})
	if err != nil {
		return nil, fmt.Errorf("cluster: list instances: %w", err)
	}
	var docs []instanceDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("cluster: list instances: %w", err)
	}
	out := make([]Instance, len(docs))
	for i, d := range docs {
		out[i] = d.instance()
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Close stops the heartbeat and removes this instance from the cluster at once: its record is
// deleted and any session it still owns is ended for the others ("stopped"). Call it after the
// drain, when the instance serves no more sessions.
func (r *Registry) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	wasRunning, epoch, loop := r.running, r.epoch, r.loopStarted
	r.running = false
	r.mu.Unlock()
	close(r.stop)
	if loop {
		<-r.done
	}
	if !wasRunning {
		return nil
	}
	why := fmt.Sprintf("cellgate instance %s stopped", r.cfg.InstanceID)
	err := r.tombstoneEpoch(ctx, epoch, why)
	if _, derr := r.instances.DeleteOne(ctx, bson.D{{Key: "_id", Value: r.cfg.InstanceID}, {Key: "epoch", Value: epoch}}); derr != nil {
		err = errors.Join(err, fmt.Errorf("cluster: remove instance record: %w", derr))
	}
	if err == nil {
		r.log.Info().Msg("cluster: instance left the cluster")
	}
	return err
}

// loop is the heartbeat: every Heartbeat (give or take a tenth, so that instances started
// together do not write together) it renews the record, reads the others and sweeps; between
// beats, a kick from SetLoad publishes the load early (publishGap).
func (r *Registry) loop() {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-r.stop
		cancel()
	}()
	nextBeat := time.Now().Add(r.jittered())
	var publishAt time.Time
	timer := time.NewTimer(time.Until(nextBeat))
	defer timer.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
			r.mu.Lock()
			at := r.lastWrite.Add(r.publishGap())
			r.mu.Unlock()
			publishAt = later(time.Now(), at)
		case <-timer.C:
			now := time.Now()
			switch {
			case !now.Before(nextBeat):
				r.beat(ctx)
				nextBeat, publishAt = time.Now().Add(r.jittered()), time.Time{}
			case !publishAt.IsZero() && !now.Before(publishAt):
				publishAt = time.Time{}
				r.renew(ctx)
			}
		}
		next := nextBeat
		if !publishAt.IsZero() && publishAt.Before(next) {
			next = publishAt
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(time.Until(next))
	}
}

// publishGap is the least time between two writes of the record: a quarter heartbeat, at most
// 200 ms, so that a pool flapping between empty and not costs the database little.
func (r *Registry) publishGap() time.Duration { return min(r.cfg.Heartbeat/4, 200*time.Millisecond) }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (r *Registry) jittered() time.Duration {
	h := r.cfg.Heartbeat
	return h - h/10 + rand.N(h/5+1)
}

// withTimeout runs f with a context that gives up before the record would expire.
func (r *Registry) withTimeout(ctx context.Context, f func(context.Context)) {
	ctx, cancel := context.WithTimeout(ctx, max(r.cfg.Expiry/2, r.cfg.Heartbeat))
	defer cancel()
	f(ctx)
}

// beat is one heartbeat. ctx ends at Close; each database call gets less than an expiry.
func (r *Registry) beat(ctx context.Context) {
	r.withTimeout(ctx, func(ctx context.Context) {
		if err := r.clock.sample(ctx, r.db); err != nil {
			r.log.Debug().Err(err).Msg("cluster: clock sample failed")
		}
	})
	r.mu.Lock()
	lost := r.lost
	r.mu.Unlock()
	if lost {
		r.withTimeout(ctx, func(ctx context.Context) {
			if _, err := r.tryRegister(ctx); err != nil {
				r.log.Warn().Err(err).Msg("cluster: registering anew failed; retrying")
			}
		})
		return
	}
	if !r.renew(ctx) {
		return
	}
	r.withTimeout(ctx, func(ctx context.Context) {
		if err := r.refreshView(ctx); err != nil {
			r.noteDB(err, "read the other instances")
			return
		}
		r.sweepExpired(ctx)
		r.mu.Lock()
		cleanup := time.Since(r.lastCleanup) >= r.cfg.Expiry
		r.mu.Unlock()
		if cleanup && r.mayDeclareDeath() {
			r.sweepOrphans(ctx)
			r.mu.Lock()
			r.lastCleanup = time.Now()
			r.mu.Unlock()
		}
	})
}

// renew writes this instance's record: heartbeat, expiry, draining, load. It answers whether the
// instance is still registered; finding it is not, it handles the loss (onLost, with ctx).
func (r *Registry) renew(ctx context.Context) bool {
	now := r.Now()
	r.mu.Lock()
	if !r.running {
		r.mu.Unlock()
		return false
	}
	doc := r.docLocked(now)
	r.mu.Unlock()
	var res *mongo.UpdateResult
	var err error
	r.withTimeout(ctx, func(ctx context.Context) {
		res, err = r.instances.UpdateOne(ctx, bson.D{{Key: "_id", Value: doc.ID}, {Key: "epoch", Value: doc.Epoch}},
			bson.D{{Key: "$set", Value: bson.D{
				{Key: "url", Value: doc.URL}, {Key: "draining", Value: doc.Draining},
				{Key: "sessions", Value: doc.Sessions}, {Key: "ready", Value: doc.Ready},
				{Key: "heartbeat", Value: doc.Heartbeat}, {Key: "expires", Value: doc.Expires},
			}}})
	})
	if err != nil {
		r.noteDB(err, "renew this instance's record")
		return false
	}
	if res.MatchedCount == 0 {
		r.onLost(ctx, doc.Epoch)
		return false
	}
	r.mu.Lock()
	r.lastWrite = time.Now()
	r.published = doc.instance().Load.readyFlags()
	r.mu.Unlock()
	r.noteDB(nil, "")
	return true
}

// onLost handles finding this instance's record gone: the others declared it dead. ctx ends at
// Close only: OnLost may take its time, and heartbeats wait for it.
func (r *Registry) onLost(ctx context.Context, epoch string) {
	r.mu.Lock()
	r.running, r.lost = false, true
	r.mu.Unlock()
	r.log.Error().Str("epoch", epoch).
		Msg("cluster: this instance was declared dead by the others (missed heartbeats); ending its sessions and registering anew")
	r.cache.clear()
	if r.cfg.OnLost != nil {
		r.cfg.OnLost(ctx)
	}
	r.withTimeout(ctx, func(ctx context.Context) {
		// Whoever swept the record ended its sessions; doing it again costs little and covers
		// a sweeper that died half way.
		if err := r.tombstoneEpoch(ctx, epoch, fmt.Sprintf("cellgate instance %s was declared dead", r.cfg.InstanceID)); err != nil {
			r.log.Warn().Err(err).Msg("cluster: ending the lost incarnation's sessions failed; the others' sweep will")
		}
		if _, err := r.tryRegister(ctx); err != nil {
			r.log.Warn().Err(err).Msg("cluster: registering anew failed; retrying")
		}
	})
}

// noteDB keeps track of whether the database has been answering this instance continuously
// (mayDeclareDeath), and logs a streak of failures once.
func (r *Registry) noteDB(err error, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		if r.failing {
			r.log.Info().Msg("cluster: database answers again")
			r.failing = false
		}
		if r.healthySince.IsZero() {
			r.healthySince = time.Now()
		}
		return
	}
	r.healthySince = time.Time{}
	if !r.failing {
		r.log.Warn().Err(err).Msgf("cluster: could not %s; the others declare this instance dead if it lasts %v", what, r.cfg.Expiry)
		r.failing = true
	}
}

// mayDeclareDeath tells whether this instance may declare another dead: only after it has itself
// reached the database continuously for an expiry. When the database comes back after an outage
// that every instance saw, all records have expired, and the first instance to reconnect must
// not sweep the others before they have had a heartbeat's chance to renew theirs.
func (r *Registry) mayDeclareDeath() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.lost && !r.healthySince.IsZero() && time.Since(r.healthySince) >= r.cfg.Expiry
}

// refreshView reads every instance record into the view.
func (r *Registry) refreshView(ctx context.Context) error {
	cur, err := r.instances.Find(ctx, bson.D{})
	if err != nil {
		return fmt.Errorf("cluster: read instances: %w", err)
	}
	var docs []instanceDoc
	if err := cur.All(ctx, &docs); err != nil {
		return fmt.Errorf("cluster: read instances: %w", err)
	}
	view := make(map[string]Instance, len(docs))
	for _, d := range docs {
		view[d.ID] = d.instance()
	}
	r.mu.Lock()
	r.view, r.viewAt = view, time.Now()
	r.mu.Unlock()
	return nil
}

// viewed is the view's record of instance id, if it is that incarnation and alive at now.
func (r *Registry) viewed(id, epoch string, now time.Time) (Instance, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst, ok := r.view[id]
	return inst, ok && inst.epoch == epoch && inst.Expires.After(now)
}

// setViewed updates the view with a record read outside a heartbeat.
func (r *Registry) setViewed(inst Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.view[inst.ID]; !ok || !old.Heartbeat.After(inst.Heartbeat) {
		r.view[inst.ID] = inst
	}
}
