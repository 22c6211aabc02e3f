package localcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The cluster's database, as production-like as this machine allows: there is no MongoDB here,
// so FerretDB (the version storage embeds) runs as a process of its own (cmd/cellgate-ferretdb)
// on a throwaway PostgreSQL cluster (Debian's postgresql), and every instance reaches it over
// loopback TCP as it would reach a MongoDB.

// ErrNoPostgreSQL: Debian's PostgreSQL server is not installed (make deps installs it).
var ErrNoPostgreSQL = errors.New("PostgreSQL server (initdb, postgres) not installed (make deps installs it)")

// PostgreSQLBinDir is where Debian's PostgreSQL server programs are (initdb, postgres,
// pg_isready, createdb): the newest /usr/lib/postgresql/N/bin, else the directory initdb on
// PATH links to (Debian puts only some of them on PATH).
func PostgreSQLBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return pgVersion(b) - pgVersion(a) })
	if p, err := exec.LookPath("initdb"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_isready")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoPostgreSQL
}

// pgVersion is N of /usr/lib/postgresql/N/bin (0 when it is no number).
func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// PostgreSQLConfig is a throwaway PostgreSQL cluster.
type PostgreSQLConfig struct {
	// Parent is where its directory is made ("" for the system's temporary directory). Run as
	// root, the cluster runs as the postgres account, which must be able to reach Parent.
	Parent string
	// NoSync turns fsync off (tests: nothing outlives them); the bench keeps PostgreSQL's defaults.
	NoSync bool
}

// PostgreSQL is a throwaway PostgreSQL cluster in a directory of its own, listening only on a
// unix socket in that directory (no TCP port: other local accounts cannot reach it), with trust
// authentication for its superuser postgres. It runs as the postgres account when this process
// is root (PostgreSQL refuses to run as root), else as this process's account; it is killed if
// this process dies, and Stop removes it.
type PostgreSQL struct {
	// Dir is its directory: the data directory (data/), the socket, the server's log (log).
	Dir     string
	bin     string
	port    int
	cred    *syscall.Credential
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// pgSocketPort names the socket (.s.PGSQL.<port>): it is in a directory of its own, so any
// number will do.
const pgSocketPort = 5432

// StartPostgreSQL makes a cluster with initdb, starts its server and waits until it accepts
// connections and has a database named ferretdb.
func StartPostgreSQL(ctx context.Context, c PostgreSQLConfig) (*PostgreSQL, error) {
	bin, err := PostgreSQLBinDir()
	if err != nil {
		return nil, err
	}
	if c.Parent == "" {
		c.Parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(c.Parent, "cgpg")
	if err != nil {
		return nil, err
	}
	p := &PostgreSQL{Dir: dir, bin: bin, port: pgSocketPort, exited: make(chan struct{})}
	started := false
	defer func() {
		if !started {
			p.Stop()
		}
	}()
	if os.Geteuid() == 0 {
		account, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL cannot run as root, and there is no postgres account: %w", err)
		}
		uid, _ := strconv.Atoi(account.Uid)
		gid, _ := strconv.Atoi(account.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	if out, err := p.command(ctx, "initdb", "-D", p.dataDir(), "-U", "postgres", "--auth=trust", "--no-sync",
		"--encoding=UTF8", "--locale=C").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	args := []string{"-D", p.dataDir(), "-c", "listen_addresses=", "-k", dir, "-p", strconv.Itoa(p.port)}
	if c.NoSync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	if p.cred != nil {
		_ = os.Chown(log.Name(), int(p.cred.Uid), int(p.cred.Gid))
	}
	p.cmd = p.command(context.Background(), "postgres", args...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	for {
		if p.command(ctx, "pg_isready", "-q", "-h", dir, "-p", strconv.Itoa(p.port), "-U", "postgres").Run() == nil {
			break
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("postgres exited before it was ready: %v; log:\n%s", p.waitErr, p.Log())
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres not ready: %w; log:\n%s", ctx.Err(), p.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if out, err := p.command(ctx, "createdb", "-h", dir, "-p", strconv.Itoa(p.port), "-U", "postgres", "ferretdb").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("createdb: %w\n%s", err, out)
	}
	started = true
	return p, nil
}

func (p *PostgreSQL) dataDir() string { return filepath.Join(p.Dir, "data") }

// command runs one of PostgreSQL's programs as the cluster's account.
func (p *PostgreSQL) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, name), args...)
	cmd.Dir = p.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// URL is the connection URL of its database ferretdb (for FerretDB's --postgresql-url).
func (p *PostgreSQL) URL() string {
	q := url.Values{"host": {p.Dir}, "port": {strconv.Itoa(p.port)}}
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/ferretdb", RawQuery: q.Encode()}).String()
}

// Log is what the server logged.
func (p *PostgreSQL) Log() string {
	data, _ := os.ReadFile(filepath.Join(p.Dir, "log"))
	return string(data)
}

// Stop shuts the server down (fast shutdown: it disconnects its clients) and removes its
// directory. Safe on a cluster that failed to start.
func (p *PostgreSQL) Stop() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	_ = os.RemoveAll(p.Dir)
}

// FerretDBConfig is a cellgate-ferretdb process.
type FerretDBConfig struct {
	// Bin is the cellgate-ferretdb binary (BuildFerretDB makes one).
	Bin string
	// PostgreSQLURL is its backend (PostgreSQL.URL); or SQLiteDir, a directory of SQLite files.
	PostgreSQLURL, SQLiteDir string
	// Addr is where it listens: "" for a free loopback port.
	Addr string
}

// FerretDB is a running cellgate-ferretdb, killed if this process dies.
type FerretDB struct {
	cmd     *exec.Cmd
	uri     string
	output  *lockedBuffer
	exited  chan struct{}
	waitErr error
}

// BuildFerretDB builds cmd/cellgate-ferretdb of the module whose root is moduleDir into dir,
// and returns the binary's path.
func BuildFerretDB(ctx context.Context, moduleDir, dir string) (string, error) {
	out := filepath.Join(dir, "cellgate-ferretdb")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/cellgate-ferretdb")
	cmd.Dir = moduleDir
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/cellgate-ferretdb: %w\n%s", err, msg)
	}
	return out, nil
}

// StartFerretDB starts cellgate-ferretdb and waits until it listens (it prints its URI then).
func StartFerretDB(ctx context.Context, c FerretDBConfig) (*FerretDB, error) {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:0"
	}
	args := []string{"--listen", c.Addr}
	if c.PostgreSQLURL != "" {
		args = append(args, "--postgresql-url", c.PostgreSQLURL)
	} else {
		args = append(args, "--sqlite-dir", c.SQLiteDir)
	}
	f := &FerretDB{output: &lockedBuffer{}, exited: make(chan struct{})}
	f.cmd = exec.Command(c.Bin, args...)
	f.cmd.Stderr = f.output
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := f.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start cellgate-ferretdb: %w", err)
	}
	uri := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		uri <- strings.TrimSpace(line)
		_, _ = io.Copy(io.Discard, stdout)
		f.waitErr = f.cmd.Wait()
		close(f.exited)
	}()
	select {
	case f.uri = <-uri:
		if f.uri != "" {
			return f, nil
		}
		<-f.exited
		return nil, fmt.Errorf("cellgate-ferretdb exited: %v\n%s", f.waitErr, f.Output())
	case <-ctx.Done():
		f.Kill()
		return nil, fmt.Errorf("cellgate-ferretdb not listening: %w\n%s", ctx.Err(), f.Output())
	}
}

// URI is the mongodb:// URI the instances are given (--mongo-uri).
func (f *FerretDB) URI() string { return f.uri }

// Output is what it logged.
func (f *FerretDB) Output() string { return f.output.String() }

// Exited is closed once the process has exited.
func (f *FerretDB) Exited() <-chan struct{} { return f.exited }

// Stop ends it (SIGTERM: it closes its connections) and waits.
func (f *FerretDB) Stop() {
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(30 * time.Second):
		f.Kill()
	}
}

// Kill ends it at once and waits.
func (f *FerretDB) Kill() {
	_ = f.cmd.Process.Kill()
	<-f.exited
}

// Database is a cluster's database: FerretDB in its own process on a throwaway PostgreSQL.
type Database struct {
	PostgreSQL *PostgreSQL
	FerretDB   *FerretDB
}

// StartDatabase starts PostgreSQL (c) and cellgate-ferretdb (bin) on it.
func StartDatabase(ctx context.Context, bin string, c PostgreSQLConfig) (*Database, error) {
	pg, err := StartPostgreSQL(ctx, c)
	if err != nil {
		return nil, err
	}
	f, err := StartFerretDB(ctx, FerretDBConfig{Bin: bin, PostgreSQLURL: pg.URL()})
	if err != nil {
		pg.Stop()
		return nil, err
	}
	return &Database{PostgreSQL: pg, FerretDB: f}, nil
}

// URI is the mongodb:// URI the instances are given (--mongo-uri).
func (d *Database) URI() string { return d.FerretDB.URI() }

// Stop stops FerretDB, then PostgreSQL, and removes PostgreSQL's directory.
func (d *Database) Stop() {
	d.FerretDB.Stop()
	d.PostgreSQL.Stop()
}
