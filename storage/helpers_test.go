package storage

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// testMongoURIEnv names a real MongoDB to run the suite against as well (skipped when unset).
const testMongoURIEnv = "CELLGATE_TEST_MONGO_URI"

// testLogger logs warnings and errors through t.Log, so they show only for failing tests (-v aside).
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
}

// startEmbedded starts FerretDB on dir and stops it when the test ends.
func startEmbedded(t testing.TB, dir string) *Embedded {
	t.Helper()
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Embedded.Close: %v", err)
		}
	})
	return e
}

// openStore opens uri and closes the store when the test ends (before any embedded database
// started earlier in the test, as cleanups run last-in first-out).
func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	cfg.Logger = testLogger(t)
	if cfg.ServerSelectionTimeout == 0 {
		cfg.ServerSelectionTimeout = 2 * time.Second
	}
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Store.Close: %v", err)
		}
	})
	return s
}

// testServer is one database server the suite runs against. open opens a store on it; stores
// opened with the same cfg.Database share a database, which is fresh for each server (and
// dropped after the test on a real MongoDB).
type testServer struct {
	open func(t *testing.T, cfg Config) *Store
}

// serverKinds start a fresh embedded database, or use CELLGATE_TEST_MONGO_URI when set.
func serverKinds() []struct {
	name  string
	start func(t *testing.T) testServer
} {
	return []struct {
		name  string
		start func(t *testing.T) testServer
	}{
		{"embedded", func(t *testing.T) testServer {
			e := startEmbedded(t, t.TempDir())
			return testServer{open: func(t *testing.T, cfg Config) *Store {
				cfg.URI, cfg.Embedded = e.URI(), e
				return openStore(t, cfg)
			}}
		}},
		{"mongodb", func(t *testing.T) testServer {
			uri := os.Getenv(testMongoURIEnv)
			if uri == "" {
				t.Skipf("%s not set", testMongoURIEnv)
			}
			prefix := "cellgate_test_" + randomHex(6)
			return testServer{open: func(t *testing.T, cfg Config) *Store {
				cfg.URI = uri
				cfg.Database = prefix + "_" + cmp.Or(cfg.Database, DefaultConfig().Database)
				s := openStore(t, cfg)
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					_ = s.db.Drop(ctx)
				})
				return s
			}}
		}},
	}
}

// forEachServer runs test against the embedded database, and against CELLGATE_TEST_MONGO_URI
// when set.
func forEachServer(t *testing.T, test func(t *testing.T, srv testServer)) {
	for _, kind := range serverKinds() {
		t.Run(kind.name, func(t *testing.T) {
			test(t, kind.start(t))
		})
	}
}

// forEachBackend runs test with a fresh store on each server (see forEachServer).
func forEachBackend(t *testing.T, cfg Config, test func(t *testing.T, s *Store)) {
	forEachServer(t, func(t *testing.T, srv testServer) {
		test(t, srv.open(t, cfg))
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readAll(t testing.TB, r io.Reader) []byte {
	t.Helper()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return data
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := mathrand.New(mathrand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// watch starts watching a fresh directory and returns it with a snapshot of its empty state.
func watch(t *testing.T, f *Files, owner FileOwner) (*Watcher, string, Snapshot) {
	t.Helper()
	dir := t.TempDir()
	w, err := f.Watch(dir, owner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	snap, err := w.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return w, dir, snap
}

// storedIDs lists the ids of all committed files.
func storedIDs(t *testing.T, files *Files) []string {
	t.Helper()
	all, err := files.filesColl.Distinct(context.Background(), "_id", bson.D{}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	must(t, bson.UnmarshalValue(bson.TypeArray, all, &ids))
	return ids
}

// longName is a valid '/'-separated path of exactly n bytes, its directories 199 bytes long.
func longName(n int) string {
	var parts []string
	for ; n > 200; n -= 200 {
		parts = append(parts, strings.Repeat("d", 199))
	}
	return strings.Join(append(parts, strings.Repeat("f", n)), "/")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// slow skips a test under go test -short (make check): it waits out
// timeouts, restarts the database or syncs a journal many times.
func slow(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow (database faults, restarts or timeouts); make test runs it")
	}
}
