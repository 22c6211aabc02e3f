package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/cellgate/cellgate/storage"
)

// testLogger logs warnings and errors through t.Log, so they show only for failing tests (-v aside).
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
}

// needsDB skips a test under go test -short (make check), which starts no database.
func needsDB(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the embedded database; make test runs it")
	}
}

// testDB starts an embedded FerretDB (as cellgate serve does without --mongo-uri) and returns a
// fresh database on it, reached through the real driver. Each call connects a client of its own:
// instances of a cluster do not share one.
type testDB struct {
	uri  string
	name string
}

func startDB(t *testing.T) testDB {
	t.Helper()
	needsDB(t)
	e, err := storage.StartEmbedded(context.Background(), storage.EmbeddedConfig{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Embedded.Close: %v", err)
		}
	})
	return testDB{uri: e.URI(), name: "cluster_test"}
}

// connect opens a client of its own on the database, closed when the test ends (before the
// database: cleanups run last-in first-out).
func (d testDB) connect(t *testing.T) *mongo.Database {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(d.uri).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	return client.Database(d.name)
}

// fastConfig is a configuration with heartbeats short enough for tests, and an expiry long
// enough that a loaded machine (go test -race of every package at once) does not miss one.
func fastConfig(t *testing.T, id string) Config {
	return Config{
		InstanceID:   id,
		AdvertiseURL: "http://127.0.0.1:1/" + id + "/",
		Heartbeat:    100 * time.Millisecond,
		Expiry:       1500 * time.Millisecond,
		Log:          testLogger(t).With().Str("test_instance", id).Logger(),
	}
}

// open opens a registry on d with cfg and closes it when the test ends.
func (d testDB) open(t *testing.T, cfg Config) *Registry {
	t.Helper()
	r, err := Open(context.Background(), d.connect(t), cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.InstanceID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("Close(%s): %v", cfg.InstanceID, err)
		}
	})
	return r
}

// start opens and starts a registry.
func (d testDB) start(t *testing.T, cfg Config) *Registry {
	t.Helper()
	r := d.open(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatalf("Start(%s): %v", cfg.InstanceID, err)
	}
	return r
}

// crash stops r's heartbeat as a kill -9 would: nothing is cleaned up, its records stay until
// the others sweep them. Close afterwards does nothing.
func (r *Registry) crash() {
	r.mu.Lock()
	r.closed, r.running = true, false
	loop := r.loopStarted
	r.mu.Unlock()
	close(r.stop)
	if loop {
		<-r.done
	}
}

// eventually polls cond until it holds or the (generous) timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
