package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	mongooptions "go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestOptions: one backend exactly, and loopback addresses only (this FerretDB has no
// authentication of its own).
func TestOptions(t *testing.T) {
	cases := []struct {
		args []string
		want string // "" for no error
	}{
		{[]string{"--sqlite-dir", "d"}, ""},
		{[]string{"--postgresql-url", "postgres://postgres@/ferretdb?host=/tmp", "--listen", "[::1]:0"}, ""},
		{nil, "one of"},
		{[]string{"--sqlite-dir", "d", "--postgresql-url", "postgres://x/y"}, "one of"},
		{[]string{"--sqlite-dir", "d", "--listen", "0.0.0.0:27017"}, "loopback"},
		{[]string{"--sqlite-dir", "d", "--listen", "localhost:27017"}, "loopback"},
		{[]string{"--sqlite-dir", "d", "--listen", "127.0.0.1"}, "--listen"},
		{[]string{"--sqlite-dir", "d", "extra"}, "unexpected"},
		{[]string{"--sqlite-dir", "d", "--log-level", "loud"}, "log-level"},
	}
	for _, tc := range cases {
		_, err := parseOptions(tc.args, io.Discard)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

// lineWriter hands the first line written to it on a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if line, _, ok := strings.Cut(w.buf.String(), "\n"); ok && w.lines != nil {
		w.lines <- line
		w.lines = nil
	}
	return len(p), nil
}

// TestRunOnSQLite: run prints a URI on a free loopback port where a Mongo client stores and finds
// documents, and returns when its context ends. (The PostgreSQL backend, as its own process, is
// tested by deploy/localcluster.)
func TestRunOnSQLite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts FerretDB; make test runs it")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &lineWriter{lines: make(chan string, 1)}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--sqlite-dir", t.TempDir(), "--listen", "127.0.0.1:0"}, stdout, io.Discard)
	}()
	var uri string
	select {
	case uri = <-stdout.lines:
	case err := <-done:
		t.Fatalf("run returned before printing its URI: %v", err)
	}
	if !strings.HasPrefix(uri, "mongodb://127.0.0.1:") || strings.HasSuffix(uri, ":0/") {
		t.Fatalf("URI %q, want a port chosen on 127.0.0.1", uri)
	}
	client, err := mongo.Connect(mongooptions.Client().ApplyURI(uri).SetServerSelectionTimeout(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	coll := client.Database("check").Collection("c")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}, {Key: "v", Value: "stored"}}); err != nil {
		t.Fatal(err)
	}
	var got struct{ V string }
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: 1}}).Decode(&got); err != nil || got.V != "stored" {
		t.Errorf("find: %v %+v", err, got)
	}
	_ = client.Disconnect(ctx)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run after its context ended: %v", err)
	}
}
