package storage

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEmbeddedIDLookupsUseAnIndex: the query FerretDB 1.24 runs for a
// lookup by _id (SELECT ... WHERE _ferretdb_sjson->'$._id' = ?) is served
// by an index on every collection once Open has run, and again after a
// restart, so lookups do not scan what the database holds; so are the
// collections others keep in the database (Config.Collections: the
// cluster registry's).
func TestEmbeddedIDLookupsUseAnIndex(t *testing.T) {
	dir := t.TempDir()
	for round := range 2 {
		e, err := StartEmbedded(context.Background(), EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		s := openStore(t, Config{URI: e.URI(), Embedded: e, Collections: []string{"cluster_sessions"}})
		id, err := s.Permalinks().Save(context.Background(), Cell{Code: "print(1)", Language: "python3"})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.Permalinks().Get(context.Background(), id); err != nil || got.Code != "print(1)" {
			t.Fatalf("round %d: Get = %+v, %v", round, got, err)
		}

		db, err := sql.Open("sqlite", "file:"+filepath.Join(e.Dir(), DefaultConfig().Database+".sqlite"))
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.Query(`SELECT name, table_name FROM ` + ferretCollections)
		if err != nil {
			t.Fatal(err)
		}
		tables := map[string]string{}
		for rows.Next() {
			var name, table string
			if err := rows.Scan(&name, &table); err != nil {
				t.Fatal(err)
			}
			tables[name] = table
		}
		rows.Close()
		for _, coll := range []string{permalinksCollection, filesBucket + ".chunks", filesBucket + ".files", uploadsCollection, settingsCollection, "cluster_sessions"} {
			table, ok := tables[coll]
			if !ok {
				t.Errorf("round %d: collection %s was not created at start-up (have %v)", round, coll, tables)
				continue
			}
			var plan strings.Builder
			rows, err := db.Query(`EXPLAIN QUERY PLAN SELECT _ferretdb_sjson FROM `+sqlIdent(table)+` WHERE `+ferretIDLookup+` = ?`, `"x"`)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id, parent, notused int
				var detail string
				_ = rows.Scan(&id, &parent, &notused, &detail)
				plan.WriteString(detail + "; ")
			}
			rows.Close()
			if !strings.Contains(plan.String(), "USING INDEX "+table+ferretLookupIdxAffix) {
				t.Errorf("round %d: a lookup by _id in %s is planned as %q, want the lookup index", round, coll, plan.String())
			}
		}
		db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.Close(ctx)
		cancel()
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
