package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	_ "modernc.org/sqlite" // the SQLite driver FerretDB itself uses
)

// FerretDB 1.24's SQLite handler keeps each collection in a table of JSON
// documents, with its _id index on the expression
// `_ferretdb_sjson->"_id"`, but filters lookups by _id on
// `_ferretdb_sjson->'$._id'`. The two name the same value, yet SQLite
// matches an index to a query only by the expression's text, so every
// lookup by _id scans the whole table: a permalink lookup took 3.8 ms with
// 100 permalinks stored and 157 ms with 10,000, and reading one chunk of a
// file parsed every chunk stored. The fix is one more index, on the exact
// expression the queries use. (FerretDB v1.24.0 sources:
// internal/backends/sqlite/metadata/metadata.go IDColumn, the queries'
// spelling; metadata/registry.go indexesCreate, the index's.)
const (
	ferretIDLookup       = `_ferretdb_sjson->'$._id'`
	ferretCollections    = "_ferretdb_collections"
	ferretLookupIdxAffix = "_cellgate_id_lookup"
)

// indexIDLookups gives every collection of database dbName the index its
// _id lookups need (see ferretIDLookup). It talks to FerretDB's SQLite
// file directly, only to add an index FerretDB does not know of: FerretDB
// lists and drops indexes from its own metadata, and dropping a collection
// drops its table with every index. It is idempotent and cheap once done.
func (e *Embedded) indexIDLookups(ctx context.Context, dbName string) (int, error) {
	path := filepath.Join(e.dir, dbName+".sqlite")
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("storage: index embedded database %s: %w", dbName, err)
	}
	// FerretDB holds the file open in WAL mode; a writer waits its turn.
	dsn := (&url.URL{Scheme: "file", Path: path, RawQuery: "_pragma=busy_timeout(10000)&_pragma=journal_mode(wal)"}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return 0, fmt.Errorf("storage: index embedded database %s: %w", dbName, err)
	}
	defer db.Close()

	rows, err := db.QueryContext(ctx, `SELECT table_name FROM `+ferretCollections)
	if err != nil {
		return 0, fmt.Errorf("storage: index embedded database %s: list collections: %w", dbName, err)
	}
	var tables []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return 0, fmt.Errorf("storage: index embedded database %s: %w", dbName, err)
		}
		tables = append(tables, t)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, fmt.Errorf("storage: index embedded database %s: %w", dbName, err)
	}
	for _, t := range tables {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %s ON %s (%s)`, sqlIdent(t+ferretLookupIdxAffix), sqlIdent(t), ferretIDLookup)
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, fmt.Errorf("storage: index embedded collection table %s: %w", t, err)
		}
	}
	return len(tables), nil
}

// sqlIdent quotes a SQLite identifier.
func sqlIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
