package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/rs/zerolog"
)

// EmbeddedConfig describes the in-process database started when no MongoDB URI is configured.
type EmbeddedConfig struct {
	// Dir holds the SQLite files (one per database), the lock file and, by default, the socket.
	// It is created if missing, and its mode set to 0700.
	Dir string

	// Addr is "127.0.0.1:PORT" (PORT may be 0) to listen on loopback TCP instead of a unix socket.
	// Empty means a unix socket inside Dir, falling back to 127.0.0.1:0 when the socket path is too
	// long for the kernel's sun_path. The socket is preferred because FerretDB has no
	// authentication here: a socket in a 0700 directory keeps kernel code (running as another
	// account, or without a network namespace) from reading or rewriting the database, which a
	// loopback port would not.
	Addr string

	// Logger receives FerretDB's own log records at warn and above (FerretDB logs every
	// connection at info), tagged component=ferretdb.
	Logger zerolog.Logger

	// FerretDBDebug passes FerretDB's debug and info records too, for diagnosing the database.
	FerretDBDebug bool
}

// Embedded is a FerretDB (SQLite handler) running inside this process, reachable through the
// MongoDB wire protocol at URI().
type Embedded struct {
	dir      string
	uri      string
	lockFile *os.File

	cancelRun context.CancelFunc
	runDone   chan struct{}
	closeOnce sync.Once
}

const (
	embeddedSocketName = "ferretdb.sock"
	embeddedLockName   = "cellgate.lock"
	// sun_path is 108 bytes on Linux; keep a margin for the terminating NUL.
	maxUnixSocketPath = 100
)

// ferretNewMu serialises ferretdb.New. It is this package's one mutable package-level variable,
// kept because nothing narrower is correct: ferretdb.New (v1.24.0, ferretdb/ferretdb.go:92)
// assigns version.Get().Package, a field of FerretDB's own process-wide build info, without
// synchronisation, so two StartEmbedded calls running at once in one process race on it. The
// state raced on belongs to the process, so the lock must too: a mutex owned by a value (a
// Config field, a starter object) would only order the callers that happen to share that value,
// and every caller of StartEmbedded (cmd, gateway and e2e tests) would have to agree on one. New
// alone needs ordering: running instances never read that field (embedded FerretDB registers no
// metrics collector and runs no telemetry reporter, the only readers). Remove it when FerretDB
// stops writing the field.
var ferretNewMu sync.Mutex

// StartEmbedded starts FerretDB on cfg.Dir and returns once it accepts connections.
// ctx bounds start-up only; the database runs until Close.
// Starting again on the same directory after Close sees the old data; starting twice on the same
// directory at the same time fails (the directory is locked), because two SQLite writers that do
// not know about each other would corrupt FerretDB's metadata.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("storage: start embedded database: %w", err)
	}
	if cfg.Dir == "" {
		return nil, errors.New("storage: start embedded database: empty directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("storage: start embedded database: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: start embedded database: create %s: %w", dir, err)
	}
	// SQLite creates its files world-readable (0644); kernels run as another local account, so
	// the directory itself must keep them out, even if it was created earlier with a looser mode.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("storage: start embedded database: restrict %s: %w", dir, err)
	}

	lockFile, err := lockDir(dir, embeddedLockName, "embedded database directory")
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			_ = lockFile.Close()
		}
	}()

	listener := ferretdb.ListenerConfig{}
	switch socketPath := filepath.Join(dir, embeddedSocketName); {
	case cfg.Addr != "":
		if err := checkLoopback(cfg.Addr); err != nil {
			return nil, err
		}
		listener.TCP = cfg.Addr
	case len(socketPath) <= maxUnixSocketPath:
		// A socket left by a process that died cannot be in use: we hold the directory lock.
		if err := removeStaleSocket(socketPath); err != nil {
			return nil, err
		}
		listener.Unix = socketPath
	default:
		cfg.Logger.Warn().Str("dir", dir).
			Msg("embedded database directory path too long for a unix socket; listening on loopback TCP without authentication")
		listener.TCP = "127.0.0.1:0"
	}

	level := slog.LevelWarn
	if cfg.FerretDBDebug {
		level = slog.LevelDebug
	}

	ferretNewMu.Lock()
	fdb, err := ferretdb.New(&ferretdb.Config{
		Listener:  listener,
		Logger:    newSlogToZerolog(cfg.Logger.With().Str("component", "ferretdb").Logger(), level),
		Handler:   "sqlite",
		SQLiteURL: (&url.URL{Scheme: "file", Path: dir + "/"}).String(),
	})
	ferretNewMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("storage: start embedded database in %s: %w", dir, err)
	}

	runCtx, cancelRun := context.WithCancel(context.Background())
	e := &Embedded{
		dir:       dir,
		lockFile:  lockFile,
		cancelRun: cancelRun,
		runDone:   make(chan struct{}),
	}
	go func() {
		defer close(e.runDone)
		_ = fdb.Run(runCtx) // always nil; it returns when runCtx is cancelled
	}()

	if listener.Unix != "" {
		// FerretDB's own URI puts the raw path in the host, which the driver cannot parse.
		e.uri = "mongodb://" + url.PathEscape(listener.Unix) + "/"
	} else {
		e.uri = fdb.MongoDBURI() // safe: the listener is bound inside ferretdb.New
	}
	started = true
	return e, nil
}

// URI is the mongodb:// URI to give to Open.
func (e *Embedded) URI() string { return e.uri }

// Dir is the absolute data directory.
func (e *Embedded) Dir() string { return e.dir }

// Close stops the listener, waits for FerretDB to close its connections and SQLite files, and
// releases the directory. Clients still connected are cut off after FerretDB's grace period
// (about 3 s), so close the Store first for a fast shutdown. Safe to call more than once.
func (e *Embedded) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.cancelRun()
		<-e.runDone
		err = e.lockFile.Close()
		if err != nil {
			err = fmt.Errorf("storage: release embedded database lock: %w", err)
		}
	})
	return err
}

// lockDir takes an exclusive lock on the file name in dir, so that a second process (or a second
// user in this one) on the same directory fails clearly instead of corrupting it; what names the
// directory in errors.
func lockDir(dir, name, what string) (*os.File, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("storage: lock %s: %w", what, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("storage: %s %s is in use by another instance: %w", what, dir, err)
		}
		return nil, fmt.Errorf("storage: lock %s %s: %w", what, dir, err)
	}
	return f, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("storage: check embedded database socket: %w", err)
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("storage: %s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("storage: remove stale embedded database socket: %w", err)
	}
	return nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("storage: embedded database address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("storage: embedded database address %q: must be a loopback IP (it has no authentication)", addr)
	}
	return nil
}
