package localcluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestDatabaseOnPostgreSQL: cellgate-ferretdb on a throwaway PostgreSQL stores what a Mongo
// client writes in PostgreSQL (a schema per Mongo database, seen with psql), serves it back, and
// Stop leaves neither process nor directory behind.
func TestDatabaseOnPostgreSQL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and FerretDB; make test runs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := BuildFerretDB(ctx, filepath.Join("..", ".."), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	db, err := StartDatabase(ctx, bin, PostgreSQLConfig{NoSync: true})
	if errors.Is(err, ErrNoPostgreSQL) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			db.Stop()
		}
	}()
	if !strings.HasPrefix(db.URI(), "mongodb://127.0.0.1:") {
		t.Fatalf("URI %q, want loopback TCP", db.URI())
	}
	client, err := mongo.Connect(options.Client().ApplyURI(db.URI()).SetServerSelectionTimeout(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	coll := client.Database("standin_check").Collection("cells")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "code", Value: "print(1)"}}); err != nil {
		t.Fatalf("insert: %v\nferretdb: %s\npostgres: %s", err, db.FerretDB.Output(), db.PostgreSQL.Log())
	}
	var got struct{ Code string }
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "a"}}).Decode(&got); err != nil || got.Code != "print(1)" {
		t.Fatalf("find: %v %+v", err, got)
	}
	_ = client.Disconnect(ctx)

	psql := exec.CommandContext(ctx, filepath.Join(db.PostgreSQL.bin, "psql"), "-h", db.PostgreSQL.Dir, "-p", "5432",
		"-U", "postgres", "-d", "ferretdb", "-Atc", "select schema_name from information_schema.schemata")
	psql.SysProcAttr = db.PostgreSQL.command(ctx, "psql").SysProcAttr
	out, err := psql.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "standin_check") {
		t.Errorf("PostgreSQL's schemas: %v\n%s", err, out)
	}

	dir := db.PostgreSQL.Dir
	db.Stop()
	stopped = true
	for name, exited := range map[string]<-chan struct{}{"ferretdb": db.FerretDB.Exited(), "postgres": db.PostgreSQL.exited} {
		select {
		case <-exited:
		default:
			t.Errorf("%s still running after Stop", name)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", dir, err)
	}
}
