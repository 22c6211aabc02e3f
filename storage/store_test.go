package storage

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func TestEmbeddedPersistsAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data dir", "db") // a space must survive the socket URI
	cell := Cell{Code: "plot(sin(x))", Language: "sage", Interacts: "[]"}
	content := []byte("x,y\n1,2\n")

	must(t, os.MkdirAll(dir, 0o755)) // too open: StartEmbedded must close it
	e, err := StartEmbedded(ctx, EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("data directory: %v, %v; want mode 0700", info.Mode(), err)
	}
	if !strings.HasPrefix(e.URI(), "mongodb://"+url.PathEscape(dir)) {
		t.Errorf("URI %s: want the unix socket in %s", e.URI(), dir)
	}
	// A second instance on the same directory would corrupt it.
	if _, err := StartEmbedded(ctx, EmbeddedConfig{Dir: dir, Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second StartEmbedded on a directory in use: %v", err)
	}

	s, err := Open(ctx, Config{URI: e.URI(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Permalinks().Save(ctx, cell)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	w, err := s.Files().Watch(work, FileOwner{Session: "s1", Kernel: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := w.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "data.csv"), content, 0o600); err != nil {
		t.Fatal(err)
	}
	report, err := w.UploadChanged(ctx, snap, id)
	if err != nil || len(report.Files) != 1 || report.Files[0].ID == "" {
		t.Fatalf("UploadChanged = %+v, %v", report, err)
	}
	fileID := report.Files[0].ID
	_ = w.Close()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	e2 := startEmbedded(t, dir)
	s2 := openStore(t, Config{URI: e2.URI()})
	got, err := s2.Permalinks().Get(ctx, id)
	if err != nil || got.Cell != cell {
		t.Fatalf("after restart: Get = %+v, %v", got, err)
	}
	if s2.Permalinks().ID(cell) != id {
		t.Errorf("the permalink key changed across the restart")
	}
	r, err := s2.Files().OpenFile(ctx, fileID, "data.csv")
	if err != nil {
		t.Fatalf("after restart: OpenFile: %v", err)
	}
	defer r.Close()
	if data := readAll(t, r); string(data) != string(content) {
		t.Errorf("after restart: file = %q", data)
	}
}

func TestEmbeddedTCP(t *testing.T) {
	dir := t.TempDir()
	if _, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: dir, Addr: "0.0.0.0:0"}); err == nil {
		t.Fatal("StartEmbedded accepted a non-loopback address")
	}
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: dir, Addr: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	if !strings.HasPrefix(e.URI(), "mongodb://127.0.0.1:") {
		t.Errorf("URI = %s", e.URI())
	}
	s := openStore(t, Config{URI: e.URI()})
	if err := s.Ping(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestOpenFailsClearly(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		uri  string
		want string
	}{
		{"empty", "", "empty database URI"},
		{"not mongodb", "http://example.com", "database URI"},
		{"nobody listening on the socket", "mongodb://" + url.PathEscape(filepath.Join(dir, "none.sock")), "cannot reach database"},
		{"nobody listening on the port", "mongodb://user:secret@127.0.0.1:1/?directConnection=true", "cannot reach database"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(context.Background(), Config{URI: tc.uri, ServerSelectionTimeout: 200 * time.Millisecond, Logger: testLogger(t)})
			if err == nil {
				_ = s.Close(context.Background())
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}

// TestOpenRetriesUntilReachable starts the database after Open began waiting for it.
func TestOpenRetriesUntilReachable(t *testing.T) {
	slow(t)
	dir := t.TempDir()
	uri := "mongodb://" + url.PathEscape(filepath.Join(dir, embeddedSocketName)) + "/"
	opened := make(chan error, 1)
	var s *Store
	go func() {
		var err error
		s, err = Open(context.Background(), Config{
			URI: uri, ConnectRetry: 30 * time.Second, ServerSelectionTimeout: 200 * time.Millisecond,
			Logger: testLogger(t),
		})
		opened <- err
	}()
	time.Sleep(700 * time.Millisecond)
	e := startEmbedded(t, dir)
	if e.URI() != uri {
		t.Fatalf("URI %s, want %s", e.URI(), uri)
	}
	select {
	case err := <-opened:
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		_ = s.Close(context.Background())
	case <-time.After(30 * time.Second):
		t.Fatal("Open did not return after the database started")
	}

	// ctx ends the retry loop early.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Open(ctx, Config{URI: "mongodb://" + url.PathEscape(filepath.Join(dir, "none.sock")), ConnectRetry: time.Hour,
		ServerSelectionTimeout: 100 * time.Millisecond, Logger: testLogger(t)})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Open with an expiring context = %v", err)
	}
}

func TestRedactURI(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mongodb://localhost", "mongodb://localhost"},
		{"mongodb://u:p@h1:27017,h2:27017/db?replicaSet=rs0&authMechanismProperties=AWS_SESSION_TOKEN:xyz",
			"mongodb://REDACTED@h1:27017,h2:27017/db?replicaSet=rs0&authMechanismProperties=REDACTED"},
		{"mongodb+srv://u:p@cluster.example.com", "mongodb+srv://REDACTED@cluster.example.com"},
		{"mongodb://u:p@ss@h", "mongodb://REDACTED@h"},
		{"mongodb://u:p%2Fss@h/?authSource=admin&authMechanism=SCRAM-SHA-256", "mongodb://REDACTED@h/?authSource=admin&authMechanism=SCRAM-SHA-256"},
		{"mongodb://h/?tlsCertificateKeyFilePassword=hunter2&appName=x", "mongodb://h/?tlsCertificateKeyFilePassword=REDACTED&appName=REDACTED"},
		{"mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:a&hunter2&retryWrites=true", "mongodb://h/?authMechanismProperties=REDACTED&REDACTED&retryWrites=true"},
		// Malformed: an unescaped '/' or '?' in the password.
		{"mongodb://u:p/hunter2@h/db", "mongodb://REDACTED (an '@' follows the host list)"},
		{"mongodb://u:p?hunter2@h", "mongodb://REDACTED (an '@' follows the host list)"},
		{"mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:ab@cd", "mongodb://REDACTED (an '@' follows the host list)"},
		{"garbage", "(unparseable URI)"},
		{"", "(unparseable URI)"},
	}
	for _, tc := range tests {
		if got := RedactURI(tc.in); got != tc.want {
			t.Errorf("RedactURI(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestFerretDBFeatures records what this package relies on, and does without, in FerretDB 1.24
// with SQLite (and checks the same on MongoDB when configured).
func TestFerretDBFeatures(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		coll := s.db.Collection("features")

		_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "u", Value: 1}}, Options: options.Index().SetUnique(true)})
		if err != nil {
			t.Errorf("unique index: %v", err)
		}
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "u", Value: 1}}); err != nil {
			t.Fatal(err)
		}
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "u", Value: 1}}); !mongo.IsDuplicateKeyError(err) {
			t.Errorf("unique index not enforced: %v", err)
		}

		_, ttlErr := coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "t", Value: 1}}, Options: options.Index().SetExpireAfterSeconds(60)})
		t.Logf("TTL index: %v", ttlErr) // FerretDB 1.24: NotImplemented; nothing here relies on TTL

		// The driver's own GridFS bucket works too, and reads what Files writes (see files_test).
		bucket := s.db.GridFSBucket(options.GridFSBucket().SetName("probe"))
		data := []byte(strings.Repeat("gridfs ", 100000))
		id, err := bucket.UploadFromStream(ctx, "probe.txt", strings.NewReader(string(data)))
		if err != nil {
			t.Fatalf("driver GridFS upload: %v", err)
		}
		stream, err := bucket.OpenDownloadStream(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		if _, err := stream.Skip(300000); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, stream); string(got) != string(data[300000:]) {
			t.Errorf("driver GridFS Skip+Read returned %d bytes, want %d", len(got), len(data)-300000)
		}
	})
}

func FuzzRedactURI(f *testing.F) {
	f.Add("user", "h1:27017,h2:27017", "db", "AWS_SESSION_TOKEN:abc")
	f.Add("u", "h", "", "")
	f.Add("u/x", "h?", "d@b", "a@b")
	f.Fuzz(func(t *testing.T, user, hosts, db, option string) {
		const secret = "S3CR3T"
		if strings.Contains(user+hosts+db+option, secret[:3]) {
			return
		}
		for _, uri := range []string{
			"mongodb://" + user + ":" + secret + "@" + hosts + "/" + db + "?replicaSet=rs&authMechanismProperties=" + option,
			"mongodb://" + user + ":" + option + secret + "@" + hosts + "/" + db,
			"mongodb+srv://" + hosts + "/" + db + "?tlsCertificateKeyFilePassword=" + secret + option,
			"mongodb://" + hosts + "/?authMechanismProperties=AWS_SESSION_TOKEN:" + option + secret + option,
		} {
			if got := RedactURI(uri); strings.Contains(got, secret) {
				t.Errorf("RedactURI(%q) = %q leaks the secret", uri, got)
			}
		}
	})
}

// TestStartEmbeddedConcurrently starts two databases at once; under the race detector it shows
// what ferretNewMu is for.
func TestStartEmbeddedConcurrently(t *testing.T) {
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			e, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: t.TempDir(), Logger: testLogger(t)})
			if err == nil {
				err = e.Close()
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestDefaultConfig(t *testing.T) {
	d := DefaultConfig()
	if d.Database != "cellgate" || d.ServerSelectionTimeout != 5*time.Second || d.MaxCellBytes != 1<<20 ||
		d.Files != DefaultFileLimits() || d.URI != "" || d.ConnectRetry != 0 {
		t.Errorf("DefaultConfig() = %+v", d)
	}
	tests := []struct {
		name string
		cfg  Config
		want Config
	}{
		{"zero", Config{}, Config{Database: d.Database, ServerSelectionTimeout: d.ServerSelectionTimeout, MaxCellBytes: d.MaxCellBytes}},
		{"defaults", d, d},
		{"negative", Config{ServerSelectionTimeout: -1, MaxCellBytes: -1}, Config{Database: d.Database, ServerSelectionTimeout: d.ServerSelectionTimeout, MaxCellBytes: d.MaxCellBytes}},
		{"set", Config{Database: "x", ServerSelectionTimeout: time.Second, MaxCellBytes: 10}, Config{Database: "x", ServerSelectionTimeout: time.Second, MaxCellBytes: 10}},
		{"clamped", Config{MaxCellBytes: 64 << 20}, Config{Database: d.Database, ServerSelectionTimeout: d.ServerSelectionTimeout, MaxCellBytes: maxCellBytesLimit}},
		// Files is newFiles' to fill (FileLimits.withDefaults must run once).
		{"files untouched", Config{Files: FileLimits{MaxDepth: -1}}, Config{Database: d.Database, ServerSelectionTimeout: d.ServerSelectionTimeout, MaxCellBytes: d.MaxCellBytes, Files: FileLimits{MaxDepth: -1}}},
	}
	for _, tc := range tests {
		got := tc.cfg.withDefaults()
		if got.Database != tc.want.Database || got.ServerSelectionTimeout != tc.want.ServerSelectionTimeout ||
			got.MaxCellBytes != tc.want.MaxCellBytes || got.Files != tc.want.Files {
			t.Errorf("%s: withDefaults() = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
