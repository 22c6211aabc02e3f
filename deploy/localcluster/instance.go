package localcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// InstanceConfig is one cellgate serve of a cluster.
type InstanceConfig struct {
	// ID is its --instance-id.
	ID string
	// Addr is where it listens (and what it advertises); "" for a free loopback port. A
	// restarted instance keeps its address, which the balancer's configuration names.
	Addr string
	// DatabaseURI is the database every instance shares (--mongo-uri).
	DatabaseURI string
	// Secret is the cluster secret, handed over in the environment (CELLGATE_CLUSTER_SECRET).
	Secret string
	// Dir holds its data/ and run/ directories (kernels' sockets live in run/: keep it short).
	Dir string
	// Args are its other flags (pool, sandbox, token, timeouts, ...).
	Args []string
	// Command makes the process that runs cellgate serve with args: bin/cellgate, or a test
	// binary that runs main. Its Env, when set, is kept (the secret is added to it).
	Command func(args []string) *exec.Cmd
}

// Instance is a running cellgate serve of a cluster, in its own process group (its kernels
// with it), killed if this process dies.
type Instance struct {
	ID, Addr string
	Cmd      *exec.Cmd
	// Logs are its JSON log lines (stderr).
	Logs    *Logs
	exited  chan struct{}
	waitErr error
}

// StartInstance starts an instance; it is not ready yet (WaitReady).
func StartInstance(c InstanceConfig) (*Instance, error) {
	if c.Addr == "" {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		c.Addr = addr
	}
	args := append([]string{"serve", "--listen", c.Addr, "--advertise-url", "http://" + c.Addr + "/", "--instance-id", c.ID,
		"--mongo-uri", c.DatabaseURI, "--data-dir", filepath.Join(c.Dir, "data"), "--runtime-dir", filepath.Join(c.Dir, "run"),
		"--log-format", "json"}, c.Args...)
	in := &Instance{ID: c.ID, Addr: c.Addr, Logs: &Logs{}, exited: make(chan struct{})}
	in.Cmd = c.Command(args)
	env := in.Cmd.Env
	if env == nil {
		env = os.Environ()
	}
	in.Cmd.Env = append(env, "CELLGATE_CLUSTER_SECRET="+c.Secret)
	in.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := in.Cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := in.Cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.ID, err)
	}
	go func() {
		in.Logs.Read(stderr)
		in.waitErr = in.Cmd.Wait()
		close(in.exited)
	}()
	return in, nil
}

// URL is where the instance is reached directly (with a trailing slash).
func (in *Instance) URL() string { return "http://" + in.Addr + "/" }

// Exited is closed once the process has exited; Err then says how.
func (in *Instance) Exited() <-chan struct{} { return in.exited }

// Err is how the process exited (nil for status 0); only after Exited.
func (in *Instance) Err() error {
	<-in.exited
	return in.waitErr
}

// Kill sends SIGKILL to the instance's process group, its kernels included: a machine lost.
func (in *Instance) Kill() error {
	return syscall.Kill(-in.Cmd.Process.Pid, syscall.SIGKILL)
}

// WaitReady waits until its /readyz answers 200, it exits, or ctx ends.
func (in *Instance) WaitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(in.URL() + "readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-in.exited:
			return fmt.Errorf("%s exited before it was ready: %v; log:\n%s", in.ID, in.waitErr, in.Logs.Tail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w; log:\n%s", in.ID, ctx.Err(), in.Logs.Tail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Logs collects a process's JSON log lines.
type Logs struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   []string
}

// Read collects the lines of r until it ends.
func (l *Logs) Read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		_ = json.Unmarshal(sc.Bytes(), &m)
		l.mu.Lock()
		l.lines = append(l.lines, m)
		l.raw = append(l.raw, sc.Text())
		l.mu.Unlock()
	}
}

// Find is the first line with message msg, or nil.
func (l *Logs) Find(msg string) map[string]any {
	if all := l.All(msg); len(all) > 0 {
		return all[0]
	}
	return nil
}

// All is every line with message msg.
func (l *Logs) All(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// Tail is the last n lines as printed.
func (l *Logs) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.raw[max(0, len(l.raw)-n):], "\n")
}
