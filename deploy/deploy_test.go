package deploy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/deploy"
	"github.com/cellgate/cellgate/deploy/localcluster"
)

// haproxyPath finds Debian's haproxy, or skips: it is the one thing these tests need that Go does not have.
func haproxyPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed (make deps installs it)")
	}
	return p
}

// TestHAProxyConfigValid: haproxy -c accepts the configuration as shipped, without warnings.
func TestHAProxyConfigValid(t *testing.T) {
	out, err := exec.Command(haproxyPath(t), "-c", "-f", "haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "WARNING") || strings.Contains(string(out), "ALERT") {
		t.Errorf("haproxy -c warns:\n%s", out)
	}
}

// TestHAProxyConfigSays: what the deployment depends on is in the configuration.
func TestHAProxyConfigSays(t *testing.T) {
	cfg := readFile(t, "haproxy.cfg")
	for _, want := range []string{
		"balance roundrobin", "timeout tunnel", "http-check send meth GET uri /readyz",
		"http-check expect status 200", "option forwardfor",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
	// No stickiness of any kind: no stick tables or cookies anywhere, and no hashing but the one
	// SockJS's xhr transports need, on their own backend.
	sections := map[string]string{}
	name := ""
	for _, line := range strings.Split(active(cfg), "\n") {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(line, " ") {
			name = strings.Join(f, " ")
		}
		sections[name] += line + "\n"
	}
	for section, text := range sections {
		for _, sticky := range []string{"stick", "cookie", "balance source", "prefer-last-server", "balance uri", "balance url_param", "balance hdr", "hash-type"} {
			if strings.Contains(text, sticky) && (section != "backend cellgate_sockjs" || !strings.HasPrefix(sticky, "balance uri") && sticky != "hash-type") {
				t.Errorf("haproxy.cfg's %s has %q: cellgate needs no stickiness", section, sticky)
			}
		}
	}
	if !strings.Contains(sections["backend cellgate_sockjs"], "balance uri depth 3") ||
		!strings.Contains(sections["frontend cells"], "use_backend cellgate_sockjs if { path_beg /sockjs/ }") {
		t.Errorf("haproxy.cfg does not send /sockjs/<server>/<session> by a hash of that path to its own backend")
	}
}

// backend is a stand-in for a cellgate instance: /readyz answers as ready says, /healthz 200,
// /ws is a websocket echo, anything else names the backend and what it was told of the client.
type backend struct {
	name  string
	addr  string
	ready atomic.Bool
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	b.ready.Store(true)
	upgrader := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !b.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			kind, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			if c.WriteMessage(kind, append([]byte(b.name+":"), data...)) != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s", b.name, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	b.addr = l.Addr().String()
	return b
}

// TestHAProxyRunsTheCluster runs the shipped configuration (its bind and server addresses
// pointed at test servers, its health checks made faster, its privilege and logging lines
// left out) and checks what cellgate relies on: consecutive requests on one keep-alive
// connection go to different ready instances in turn (no stickiness), an instance whose
// /readyz fails gets no new requests, websockets pass both ways, and when no instance is
// ready the requests still reach a live one.
func TestHAProxyRunsTheCluster(t *testing.T) {
	haproxyPath(t)
	if testing.Short() {
		t.Skip("runs haproxy; make test runs it")
	}
	backends := []*backend{startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")}
	backends[2].ready.Store(false)
	o := localcluster.HAProxyOptions{Front: freePort(t), QuickChecks: true}
	for _, b := range backends {
		o.Servers = append(o.Servers, b.addr)
	}
	h, err := localcluster.StartHAProxy(deploy.HAProxyConfig(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.Output())
		}
	})
	front := h.Front
	alive := func() {
		select {
		case <-h.Exited():
			t.Fatalf("haproxy exited:\n%s", h.Output())
		default:
		}
	}
	base := "http://" + front
	client := &http.Client{Timeout: 5 * time.Second}
	get := func() string {
		resp, err := client.Get(base + "/kernel/x")
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("status %d", resp.StatusCode)
		}
		return string(body)
	}

	// Once b3's checks have failed, requests alternate between b1 and b2.
	var seq []string
	eventually(t, 20*time.Second, "b3 out and b1, b2 in turn", func() bool {
		alive()
		seq = seq[:0]
		for range 6 {
			seq = append(seq, strings.Fields(get() + " ")[0])
		}
		for i, s := range seq {
			if s != "b1" && s != "b2" || i > 0 && s == seq[i-1] {
				return false
			}
		}
		return true
	})
	if got := get(); !strings.HasSuffix(got, " 127.0.0.1 http") {
		t.Errorf("backend was told %q, want X-Forwarded-For 127.0.0.1 and X-Forwarded-Proto http", got)
	}

	// A websocket through the balancer.
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+front+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket through haproxy: %v", err)
	}
	for _, m := range []string{"one", "two", strings.Repeat("x", 100000)} {
		if err := conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if name, rest, _ := strings.Cut(string(data), ":"); rest != m || (name != "b1" && name != "b2") {
			t.Fatalf("websocket echo %.40q", data)
		}
	}
	conn.Close()

	// No instance ready: requests still reach a live one.
	for _, b := range backends {
		b.ready.Store(false)
	}
	eventually(t, 20*time.Second, "every instance out of the ready backend", func() bool {
		alive()
		seen := map[string]bool{}
		for range 6 {
			s := get()
			if strings.HasPrefix(s, "status") || strings.HasPrefix(s, "error") {
				return false
			}
			seen[strings.Fields(s)[0]] = true
		}
		return seen["b3"] // only the fallback sends anything to b3
	})
}

// TestHAProxyConfigPointed: the configuration run on one machine has the shipped one's
// backends, each with every server asked for (one or several), and nothing that needs root.
func TestHAProxyConfigPointed(t *testing.T) {
	for _, servers := range [][]string{{"127.0.0.1:1"}, {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"}} {
		cfg, err := localcluster.Config(deploy.HAProxyConfig(), localcluster.HAProxyOptions{Front: "127.0.0.1:9", Servers: servers})
		if err != nil {
			t.Fatal(err)
		}
		backends := strings.Count(cfg, "\nbackend ")
		for i, s := range servers {
			if n := strings.Count(cfg, fmt.Sprintf("server cellgate%d %s\n", i+1, s)); n != backends {
				t.Errorf("server %s in %d backends, want all %d:\n%s", s, n, backends, cfg)
			}
		}
		if n := strings.Count(cfg, "\n    server "); n != backends*len(servers) {
			t.Errorf("%d server lines for %d servers:\n%s", n, len(servers), cfg)
		}
		for _, gone := range []string{"10.0.0.", "chroot", "daemon", "/dev/log", "bind :80"} {
			if strings.Contains(cfg, gone) {
				t.Errorf("pointed configuration still has %q", gone)
			}
		}
		if !strings.Contains(cfg, "bind 127.0.0.1:9") || !strings.Contains(cfg, "inter 2s") {
			t.Errorf("pointed configuration lacks the bind or the shipped check timing:\n%s", cfg)
		}
		path := filepath.Join(t.TempDir(), "haproxy.cfg")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(haproxyPath(t), "-c", "-f", path).CombinedOutput(); err != nil || strings.Contains(string(out), "WARNING") {
			t.Errorf("haproxy -c on the pointed configuration: %v\n%s", err, out)
		}
	}
	if _, err := localcluster.Config(deploy.HAProxyConfig(), localcluster.HAProxyOptions{Front: "127.0.0.1:9"}); err == nil {
		t.Error("no servers accepted")
	}
}

// TestSystemdUnit: the unit runs cellgate serve with an environment file, restarts it on
// failure, stops it with SIGTERM to the main process only and waits longer than its drain.
func TestSystemdUnit(t *testing.T) {
	unit := parseUnit(t, readFile(t, "cellgate.service"))
	for key, want := range map[string]string{
		"Restart":    "on-failure",
		"KillSignal": "SIGTERM",
		"KillMode":   "mixed",
	} {
		if got := unit["Service."+key]; got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	if !strings.HasSuffix(strings.Fields(unit["Service.ExecStart"] + " x")[0], "/cellgate") || !strings.Contains(unit["Service.ExecStart"], " serve") {
		t.Errorf("ExecStart=%q, want cellgate serve", unit["Service.ExecStart"])
	}
	if unit["Service.EnvironmentFile"] == "" {
		t.Error("no EnvironmentFile")
	}
	stop, err := time.ParseDuration(unit["Service.TimeoutStopSec"])
	if err != nil {
		t.Fatalf("TimeoutStopSec=%q: %v", unit["Service.TimeoutStopSec"], err)
	}
	env := parseEnv(t, readFile(t, "cellgate.env"))
	drain, err := time.ParseDuration(env["CELLGATE_DRAIN_TIMEOUT"])
	if err != nil {
		t.Fatalf("cellgate.env CELLGATE_DRAIN_TIMEOUT=%q: %v", env["CELLGATE_DRAIN_TIMEOUT"], err)
	}
	// The drain ends sessions, then writes queued permalinks and closes the database: leave room.
	if stop < drain+10*time.Second {
		t.Errorf("TimeoutStopSec %v is not well above the drain timeout %v", stop, drain)
	}
	for _, k := range []string{"CELLGATE_MONGO_URI", "CELLGATE_ADVERTISE_URL", "CELLGATE_CLUSTER_SECRET", "CELLGATE_TRUST_PROXY", "CELLGATE_LISTEN"} {
		if env[k] == "" {
			t.Errorf("cellgate.env does not set %s", k)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		// Only the syntax: the binary and the environment file are not installed here.
		out, _ := exec.Command(sa, "verify", "cellgate.service").CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "Unknown key") || strings.Contains(line, "Unknown section") || strings.Contains(line, "Failed to parse") {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}

// parseUnit reads a systemd unit into "Section.Key" → value (the last one wins).
func parseUnit(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %q", line)
			}
			out[section+"."+strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// parseEnv reads an EnvironmentFile's KEY=value lines.
func parseEnv(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("environment line %q", line)
		}
		out[k] = v
	}
	return out
}

// active is a configuration without its comments.
func active(cfg string) string {
	var b strings.Builder
	for _, line := range strings.Split(cfg, "\n") {
		line, _, _ = strings.Cut(line, "#")
		b.WriteString(line + "\n")
	}
	return b.String()
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
