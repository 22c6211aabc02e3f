// Package localcluster runs a cellgate cluster on one machine as deploy/ describes it on several:
// cellgate instances sharing one database, and Debian's haproxy in front of them with
// deploy/haproxy.cfg's settings pointed at their loopback addresses. The database stands in for
// a MongoDB: FerretDB as a process of its own (cmd/cellgate-ferretdb) on a throwaway PostgreSQL
// cluster (StartDatabase). The cluster tests
// (cmd/cellgate), the deploy tests (against stand-in servers) and the bench's cluster phase
// (cmd/cellbench) all run it from here. It starts processes and reads their output; it asserts
// nothing, so it holds no test code.
package localcluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FreeAddr is a loopback address with a port free now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// HAProxyOptions say where the shipped configuration is pointed.
type HAProxyOptions struct {
	// Front is the address haproxy binds.
	Front string
	// Servers are the instances (host:port), in every backend.
	Servers []string
	// QuickChecks checks health every 100 ms (fastinter 50 ms) instead of the shipped 2 s
	// (500 ms), so that tests do not wait on the balancer. The bench keeps the shipped timing:
	// how soon the balancer stops sending new sessions to a draining instance depends on it.
	QuickChecks bool
}

// serverLine is a backend's server line: its name, address and options.
var serverLine = regexp.MustCompile(`^(\s*server\s+)(\S+)\s+\S+(.*)$`)

// Config is the shipped configuration pointed at o: the bind line and each backend's servers
// replaced (one line per server, named after the first shipped one with its options), without
// what needs root or syslog (chroot, user, group, daemon; logs go to stderr), and maxconn
// lowered to what an unprivileged process's descriptors allow.
func Config(shipped string, o HAProxyOptions) (string, error) {
	if len(o.Servers) == 0 {
		return "", errors.New("localcluster: no servers for haproxy")
	}
	var out []string
	backends, inBackend, serversDone := 0, false, false
	for _, line := range strings.Split(shipped, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") && !strings.HasPrefix(f[0], "#") {
			inBackend, serversDone = f[0] == "backend", false
		}
		switch {
		case len(f) == 0:
		case f[0] == "chroot" || f[0] == "user" || f[0] == "group" || f[0] == "daemon":
			continue
		case f[0] == "log" && len(f) > 1 && f[1] != "global":
			line = "    log stderr format raw local0"
		case f[0] == "maxconn":
			line = "    maxconn 500"
		case f[0] == "bind":
			line = "    bind " + o.Front
		case f[0] == "server":
			m := serverLine.FindStringSubmatch(line)
			if m == nil || !inBackend {
				return "", fmt.Errorf("localcluster: haproxy.cfg line %q: a server line outside a backend", line)
			}
			if serversDone {
				continue
			}
			serversDone = true
			backends++
			base := strings.TrimRight(m[2], "0123456789")
			var lines []string
			for i, addr := range o.Servers {
				lines = append(lines, fmt.Sprintf("%s%s%d %s%s", m[1], base, i+1, addr, m[3]))
			}
			line = strings.Join(lines, "\n")
		case f[0] == "default-server" && o.QuickChecks:
			line = strings.NewReplacer("inter 2s", "inter 100ms", "fastinter 500ms", "fastinter 50ms", "downinter 2s", "downinter 100ms").Replace(line)
		}
		out = append(out, line)
	}
	if backends == 0 {
		return "", errors.New("localcluster: haproxy.cfg has no backend with servers")
	}
	return strings.Join(out, "\n"), nil
}

// ErrNoHAProxy: Debian's haproxy is not installed (make deps installs it).
var ErrNoHAProxy = errors.New("haproxy not installed (make deps installs it)")

// HAProxy is a running haproxy.
type HAProxy struct {
	// Front is where clients reach the cluster.
	Front  string
	cmd    *exec.Cmd
	output *lockedBuffer
	exited chan struct{}
}

// StartHAProxy runs haproxy in the foreground with shipped pointed at o (Config), its
// configuration written in dir.
func StartHAProxy(shipped, dir string, o HAProxyOptions) (*HAProxy, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, ErrNoHAProxy
	}
	cfg, err := Config(shipped, o)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	h := &HAProxy{Front: o.Front, output: &lockedBuffer{}, exited: make(chan struct{})}
	h.cmd = exec.Command(bin, "-db", "-f", path)
	h.cmd.Stdout, h.cmd.Stderr = h.output, h.output
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	go func() { _ = h.cmd.Wait(); close(h.exited) }()
	return h, nil
}

// Exited is closed once haproxy has exited.
func (h *HAProxy) Exited() <-chan struct{} { return h.exited }

// Output is what haproxy printed (its logs and alerts).
func (h *HAProxy) Output() string { return h.output.String() }

// Stop ends haproxy (SIGTERM: it stops at once in the foreground) and waits for it.
func (h *HAProxy) Stop() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
}

// lockedBuffer collects a process's output, written by exec's copying goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
