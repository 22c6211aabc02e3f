// Command cellgate-ferretdb runs FerretDB (the version storage embeds) as a process of its own,
// on PostgreSQL or on SQLite files: a MongoDB-compatible database that several cellgate
// instances reach over TCP, standing in for MongoDB where there is none (the cluster tests,
// cellbench's cluster phase, trying a cluster on one machine). FerretDB's own cmd/ferretdb does
// not build from its module; this is its embeddable package with a listener and flags.
//
//	cellgate-ferretdb --postgresql-url 'postgres://postgres@/ferretdb?host=/run/postgresql' --listen 127.0.0.1:27017
//	cellgate-ferretdb --sqlite-dir ./ferretdb-data --listen 127.0.0.1:0
//
// Once it accepts connections it prints its mongodb:// URI as one line on stdout (the port
// chosen when --listen asks for port 0), then serves until SIGTERM or SIGINT. FerretDB has no
// authentication of its own here (it passes clients' credentials to PostgreSQL, and SQLite has
// none), so it listens on loopback addresses only. It is a stand-in: a production cluster runs
// on a MongoDB replica set.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "cellgate-ferretdb:", err)
		os.Exit(1)
	}
}

// options are the command line's.
type options struct {
	listen        string
	postgreSQLURL string
	sqliteDir     string
	logLevel      slog.Level
}

func parseOptions(args []string, usage io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("cellgate-ferretdb", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:27017", "loopback `address` to listen on (port 0: a free one, printed)")
	fs.StringVar(&o.postgreSQLURL, "postgresql-url", "", "PostgreSQL connection `URL` (FerretDB's postgresql handler), e.g. postgres://postgres@/ferretdb?host=/run/postgresql")
	fs.StringVar(&o.sqliteDir, "sqlite-dir", "", "`directory` of SQLite files (FerretDB's sqlite handler), created if missing; instead of --postgresql-url")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelWarn, "FerretDB's log `level` (debug, info, warn, error); info logs every connection")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if (o.postgreSQLURL == "") == (o.sqliteDir == "") {
		return o, errors.New("give one of --postgresql-url and --sqlite-dir")
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return o, fmt.Errorf("--listen %q: %w", o.listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return o, fmt.Errorf("--listen %q: must be a loopback IP address (this FerretDB has no authentication of its own)", o.listen)
	}
	return o, nil
}

// config is FerretDB's configuration for o.
func (o options) config(logs io.Writer) (*ferretdb.Config, error) {
	c := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: o.listen},
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: o.logLevel})),
	}
	if o.postgreSQLURL != "" {
		c.Handler, c.PostgreSQLURL = "postgresql", o.postgreSQLURL
		return c, nil
	}
	dir, err := filepath.Abs(o.sqliteDir)
	if err != nil {
		return nil, err
	}
	// SQLite creates its files world-readable; the directory keeps other accounts out.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c.Handler, c.SQLiteURL = "sqlite", (&url.URL{Scheme: "file", Path: dir + "/"}).String()
	return c, nil
}

// run serves until ctx ends or a SIGTERM or SIGINT comes, after printing the URI on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	cfg, err := o.config(stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	db, err := ferretdb.New(cfg)
	if err != nil {
		return err
	}
	// The listener is bound by New: the URI (with the port chosen) is known, and connections
	// made from now on wait in its backlog until Run accepts them.
	if _, err := fmt.Fprintln(stdout, db.MongoDBURI()); err != nil {
		return err
	}
	return db.Run(ctx)
}
