package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/deploy"
	"github.com/cellgate/cellgate/deploy/localcluster"
	"github.com/cellgate/cellgate/gateway"
)

// The cluster test: three cellgate processes (this test binary as cellgate serve) sharing one
// database over TCP (FerretDB in a process of its own on PostgreSQL, standing in for MongoDB),
// Debian's haproxy in front of them with deploy/haproxy.cfg's settings (round robin, no
// stickiness), and clients that only know haproxy's address.

const (
	testClusterSecret = "a cluster secret for tests only"
	testClusterToken  = "cluster-test-token"
)

// startInstance runs cellgate serve (this test binary as main) as instance id of a cluster on
// the database at uri, in a directory of its own, on a free port. Its kernels are in its process
// group, which the test kills at the end whatever happened.
func startInstance(t *testing.T, id, uri string) *localcluster.Instance {
	t.Helper()
	return startInstanceAt(t, id, uri, instanceDir(t), "")
}

// instanceDir is a directory for an instance's data and runtime directories, removed at the end.
func instanceDir(t *testing.T) string {
	t.Helper()
	// Kernels' sockets live in the runtime directory: a short path.
	dir, err := os.MkdirTemp("/tmp", "cgcl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startInstanceAt is startInstance in dir (its --data-dir, with the permalink journal, is
// dir/data) at addr ("" for a free port): a restart keeps both.
func startInstanceAt(t *testing.T, id, uri, dir, addr string) *localcluster.Instance {
	t.Helper()
	in, err := localcluster.StartInstance(localcluster.InstanceConfig{
		ID: id, Addr: addr, DatabaseURI: uri, Secret: testClusterSecret, Dir: dir,
		Args: []string{"--sandbox", "none", "--pool", "python3=1", "--max-kernels", "8", "--max-kernels-per-address", "16",
			"--trust-proxy", "--poll-wait", "2s", "--lease-timeout", "60s", "--token", testClusterToken, "--drain-timeout", "30s",
			"--cluster-heartbeat", "200ms", "--cluster-expiry", "2s"},
		Command: testBinaryAsMain,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = in.Kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", id, in.Logs.Tail(1<<20))
		}
	})
	return in
}

// startClusterDatabase starts the cluster's database as production-like as this machine
// allows (there is no MongoDB here): FerretDB as a process of its own (cmd/cellgate-ferretdb,
// built here) on a throwaway PostgreSQL cluster, reached by the instances over loopback TCP.
func startClusterDatabase(t *testing.T) *localcluster.Database {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := localcluster.BuildFerretDB(ctx, filepath.Join("..", ".."), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	db, err := localcluster.StartDatabase(ctx, bin, localcluster.PostgreSQLConfig{NoSync: true})
	if errors.Is(err, localcluster.ErrNoPostgreSQL) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cellgate-ferretdb output:\n%s\nPostgreSQL log:\n%s", db.FerretDB.Output(), db.PostgreSQL.Log())
		}
		db.Stop()
	})
	return db
}

// testBinaryAsMain runs cellgate with args as this test binary's TestMain does.
func testBinaryAsMain(args []string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CELLGATE_TEST_AS_MAIN=1", "CELLGATE_TEST_ARGS="+strings.Join(args, " "))
	return cmd
}

// startHAProxy runs haproxy with deploy/haproxy.cfg pointed at the instances, with quick checks.
func startHAProxy(t *testing.T, instances []*localcluster.Instance) string {
	t.Helper()
	o := localcluster.HAProxyOptions{Front: freeAddr(t), QuickChecks: true}
	for _, in := range instances {
		o.Servers = append(o.Servers, in.Addr)
	}
	h, err := localcluster.StartHAProxy(deploy.HAProxyConfig(), t.TempDir(), o)
	if errors.Is(err, localcluster.ErrNoHAProxy) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.Output())
		}
	})
	return h.Front
}

// clusterClient speaks to the cluster through haproxy only.
type clusterClient struct {
	t     *testing.T
	front string
	http  *http.Client
}

// answer is an HTTP answer: its status, body, and the instances that handled it (the one the
// balancer picked first; the owner last when it was forwarded).
type answer struct {
	status int
	body   []byte
	via    []string
	header http.Header
}

func (a answer) picked() string {
	if len(a.via) == 0 {
		return ""
	}
	return a.via[0]
}

func (a answer) served() string {
	if len(a.via) == 0 {
		return ""
	}
	return a.via[len(a.via)-1]
}

func (c *clusterClient) do(method, path string, body io.Reader, contentType string) answer {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://"+c.front+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: data, via: resp.Header.Values("Cellgate-Instance"), header: resp.Header}
}

// waitInRotation waits until every instance is in the balancer's ready backend: each has a
// ready kernel again (its pool refilled after the subtests before) and haproxy's checks saw it.
func (c *clusterClient) waitInRotation() {
	c.t.Helper()
	eventually(c.t, 60*time.Second, "haproxy to send requests to all three instances", func() bool {
		seen := map[string]bool{}
		for range 6 {
			resp, err := c.http.Get("http://" + c.front + "/readyz")
			if err != nil {
				return false // haproxy starting
			}
			resp.Body.Close()
			seen[resp.Header.Get("Cellgate-Instance")] = resp.StatusCode == http.StatusOK
		}
		return seen["cg1"] && seen["cg2"] && seen["cg3"]
	})
}

func (c *clusterClient) form(path string, v url.Values) answer {
	return c.do(http.MethodPost, path, strings.NewReader(v.Encode()), "application/x-www-form-urlencoded")
}

func decode[T any](t *testing.T, a answer) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(a.body, &v); err != nil {
		t.Fatalf("answer %d %q: %v", a.status, a.body, err)
	}
	return v
}

// newKernel starts a Sage-cell session through the balancer; the answer names its owner.
func (c *clusterClient) newKernel() (id, owner string) {
	c.t.Helper()
	a := c.form("/kernel", url.Values{"timeout": {"120"}, "language": {"python"}})
	if a.status != http.StatusOK {
		c.t.Fatalf("POST /kernel: %d %s", a.status, a.body)
	}
	k := decode[struct{ ID string }](c.t, a)
	return k.ID, a.served()
}

func (c *clusterClient) dial(id string) *websocket.Conn {
	c.t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial("ws://"+c.front+"/kernel/"+id+"/channels", nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		c.t.Fatalf("websocket for %s: %v (%d)", id, err, status)
	}
	return ws
}

// execute runs code on a Sage-cell websocket and returns its stdout and the files announced
// (before its reply).
func execute(t *testing.T, ws *websocket.Conn, msgID, code string) (stdout string, files []string) {
	t.Helper()
	req := map[string]any{"channel": "shell", "header": map[string]any{"msg_type": "execute_request", "msg_id": msgID},
		"parent_header": map[string]any{}, "metadata": map[string]any{},
		"content": map[string]any{"code": code, "silent": false, "user_expressions": map[string]string{"_sagecell_files": "sys._sage_.new_files()"}}}
	if err := ws.WriteJSON(req); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	replied, idle := false, false
	readUntil(t, ws, func(f map[string]any) bool {
		header, _ := f["header"].(map[string]any)
		parent, _ := f["parent_header"].(map[string]any)
		if parent["msg_id"] != msgID {
			return false
		}
		content, _ := f["content"].(map[string]any)
		switch header["msg_type"] {
		case "stream":
			text, _ := content["text"].(string)
			out.WriteString(text)
		case "cellgate.files":
			list, _ := content["files"].([]any)
			for _, l := range list {
				if m, ok := l.(map[string]any); ok {
					u, _ := m["url"].(string)
					files = append(files, u)
				}
			}
		}
		// The reply (shell) and the kernel's idle (iopub, after its output) may come in
		// either order.
		replied = replied || header["msg_type"] == "execute_reply"
		idle = idle || state(f) == "idle"
		return replied && idle
	})
	return out.String(), files
}

// TestClusterBehindHAProxy runs three instances behind haproxy (round robin, no stickiness) and
// drives them as clients would: the Sage-cell websocket and long-polling (each request on
// another instance than the one before), /service, permalinks and files written on one instance
// and read through the others; then one instance is drained with SIGTERM (its sessions run on
// while new ones go to the others, until they end or the drain deadline) and another killed
// with SIGKILL, and their clients are told why their sessions ended.
func TestClusterBehindHAProxy(t *testing.T) {
	freeAddr(t) // skips under -short
	db := startClusterDatabase(t)
	if !strings.HasPrefix(db.URI(), "mongodb://127.0.0.1:") {
		t.Fatalf("database at %s, want TCP on 127.0.0.1", db.URI())
	}
	var instances []*localcluster.Instance
	for i := 1; i <= 3; i++ {
		instances = append(instances, startInstance(t, fmt.Sprintf("cg%d", i), db.URI()))
	}
	byID := map[string]*localcluster.Instance{}
	for _, in := range instances {
		byID[in.ID] = in
		waitReady(t, "http://"+in.Addr)
	}
	front := startHAProxy(t, instances)
	c := &clusterClient{t: t, front: front, http: &http.Client{Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return nil }}}
	c.waitInRotation()

	t.Run("websocket", func(t *testing.T) {
		id, owner := c.newKernel()
		// Three connections in turn: round robin lands at least two on other instances than the
		// owner, which forward them.
		for i := range 3 {
			ws := c.dial(id)
			got, _ := execute(t, ws, fmt.Sprintf("ws%d", i), fmt.Sprintf("print(%d*7)", i+6))
			ws.Close()
			if want := fmt.Sprintf("%d\n", (i+6)*7); got != want {
				t.Errorf("connection %d to %s (owned by %s): stdout %q, want %q", i, id, owner, got, want)
			}
		}
		c.do(http.MethodDelete, "/kernel/"+id, nil, "")
	})

	t.Run("long-polling", func(t *testing.T) {
		id, owner := c.newKernel()
		var via []string
		req := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"p1"},"parent_header":{},"metadata":{},"content":{"code":"print('polled')","silent":false}}`
		a := c.do(http.MethodPost, "/kernel/"+id+"/poll?client=pc", strings.NewReader(req), "application/json")
		if a.status != http.StatusAccepted {
			t.Fatalf("poll POST: %d %s", a.status, a.body)
		}
		via = append(via, a.picked())
		since, stdout := uint64(0), ""
		for i := 0; i < 50 && !strings.Contains(stdout, "polled"); i++ {
			a := c.do(http.MethodGet, fmt.Sprintf("/kernel/%s/poll?client=pc&since=%d&wait=2", id, since), nil, "")
			if a.status != http.StatusOK {
				t.Fatalf("poll GET: %d %s", a.status, a.body)
			}
			if a.served() != owner {
				t.Errorf("poll GET served by %s, want the owner %s", a.served(), owner)
			}
			via = append(via, a.picked())
			p := decode[struct {
				Messages []map[string]any
				Next     uint64
			}](t, a)
			for _, m := range p.Messages {
				if h, _ := m["header"].(map[string]any); h["msg_type"] == "stream" {
					text, _ := m["content"].(map[string]any)["text"].(string)
					stdout += text
				}
			}
			since = p.Next
		}
		if stdout != "polled\n" {
			t.Errorf("stdout by long-polling %q", stdout)
		}
		for i := 1; i < len(via); i++ {
			if via[i] == via[i-1] {
				t.Errorf("requests %d and %d both went to %s (round robin sends each to the next): %v", i-1, i, via[i], via)
			}
		}
		c.do(http.MethodDelete, "/kernel/"+id, nil, "")
	})

	t.Run("service", func(t *testing.T) {
		// At once, once every instance is in rotation again (each one's only ready kernel went
		// to the subtests before): one after another, the first would take an instance's
		// kernel, and its /readyz 503 take it out of rotation before the others were sent.
		c.waitInRotation()
		answers := make([]answer, 3)
		var wg sync.WaitGroup
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i] = c.form("/service", url.Values{"code": {fmt.Sprintf("print(%d+1)", i)}, "language": {"python"}})
			}()
		}
		wg.Wait()
		seen := map[string]bool{}
		for i, a := range answers {
			res := decode[struct {
				Success bool
				Stdout  string
			}](t, a)
			if a.status != http.StatusOK || !res.Success || res.Stdout != fmt.Sprintf("%d\n", i+1) {
				t.Errorf("/service %d: %d %s", i, a.status, a.body)
			}
			seen[a.picked()] = true
		}
		if len(seen) != 3 {
			t.Errorf("/service requests reached %v, want all three instances", seen)
		}
	})

	t.Run("permalinks", func(t *testing.T) {
		a := c.form("/permalink", url.Values{"code": {"print('shared')"}, "language": {"python"}})
		if a.status != http.StatusOK {
			t.Fatalf("POST /permalink: %d %s", a.status, a.body)
		}
		q := decode[struct{ Query string }](t, a).Query
		readers := map[string]bool{}
		eventually(t, 30*time.Second, "the permalink readable from every instance", func() bool {
			a := c.do(http.MethodGet, "/permalink?q="+q, nil, "")
			if a.status == http.StatusOK {
				var cell []any
				if json.Unmarshal(a.body, &cell) != nil || len(cell) != 3 || cell[0] != "print('shared')" {
					t.Fatalf("permalink %s from %s: %s", q, a.picked(), a.body)
				}
				readers[a.picked()] = true
			}
			return len(readers) == 3
		})
	})

	// Nothing acknowledged is lost: a fourth instance (not behind the balancer) acknowledges an
	// execution's permalink, then, its way to the database cut, more permalinks (POST
	// /permalink: they are in its journal only), and is killed at once (SIGKILL, kernels and
	// all). The others do not know those permalinks; restarted with the same --data-dir (its
	// journal) and address, it writes them, and every instance reads every one of them.
	t.Run("journal", func(t *testing.T) {
		relay, err := localcluster.StartRelay(strings.TrimSuffix(strings.TrimPrefix(db.URI(), "mongodb://"), "/"))
		if err != nil {
			t.Fatal(err)
		}
		defer relay.Close()
		dir := instanceDir(t)
		in := startInstanceAt(t, "cg4", "mongodb://"+relay.Addr+"/", dir, "")
		waitReady(t, "http://"+in.Addr)
		direct := &clusterClient{t: t, front: in.Addr, http: c.http}
		want := map[string]string{} // permalink id: its code
		executed := "print('executed on cg4')"
		a := direct.form("/service", url.Values{"code": {executed}, "language": {"python"}})
		res := decode[struct {
			Success   bool
			Permalink string
		}](t, a)
		if !res.Success || res.Permalink == "" {
			t.Fatalf("/service on cg4: %d %s", a.status, a.body)
		}
		want[res.Permalink] = executed
		relay.Cut()
		var unwritten []string
		for i := range 3 {
			code := fmt.Sprintf("print('acknowledged while the database was out of reach, %d')", i)
			a := direct.form("/permalink", url.Values{"code": {code}, "language": {"python"}})
			if a.status != http.StatusOK {
				t.Fatalf("POST /permalink on cg4 without its database: %d %s", a.status, a.body)
			}
			q := decode[struct{ Query string }](t, a).Query
			want[q] = code
			unwritten = append(unwritten, q)
		}
		if err := in.Kill(); err != nil {
			t.Fatal(err)
		}
		<-in.Exited()
		for _, q := range unwritten {
			if a := c.do(http.MethodGet, "/permalink?q="+q, nil, ""); a.status != http.StatusNotFound {
				t.Fatalf("permalink %s, acknowledged by cg4 without its database, answered %d by %s before cg4 restarted: the test did not cut it off", q, a.status, a.picked())
			}
		}
		restarted := startInstanceAt(t, "cg4", db.URI(), dir, in.Addr)
		waitReady(t, "http://"+restarted.Addr)
		if replay := restarted.Logs.Find("replaying unwritten permalinks from the journal"); replay == nil {
			t.Errorf("restarted cg4 replayed no journal")
		} else if n, _ := replay["permalinks"].(float64); int(n) < len(unwritten) {
			t.Errorf("restarted cg4 replayed %v permalinks, want at least %d", replay["permalinks"], len(unwritten))
		}
		readers := append([]*localcluster.Instance{restarted}, instances...)
		for q, code := range want {
			for _, r := range readers {
				eventually(t, 60*time.Second, "permalink "+q+" readable from "+r.ID, func() bool {
					resp, err := http.Get(r.URL() + "permalink?q=" + q)
					if err != nil {
						t.Fatalf("GET /permalink from %s: %v", r.ID, err)
					}
					defer resp.Body.Close()
					var cell []any
					if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&cell) != nil {
						return false
					}
					if len(cell) != 3 || cell[0] != code {
						t.Fatalf("permalink %s from %s: %v, want code %q", q, r.ID, cell, code)
					}
					return true
				})
			}
		}
		// cg4 leaves: the balancer does not know it, and later subtests place sessions on the three.
		if err := restarted.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-restarted.Exited():
		case <-time.After(60 * time.Second):
			t.Fatal("cg4 did not exit after SIGTERM")
		}
	})

	t.Run("files", func(t *testing.T) {
		id, _ := c.newKernel()
		ws := c.dial(id)
		defer ws.Close()
		_, files := execute(t, ws, "f1", "open('note.txt', 'w').write('written on one instance')")
		if len(files) != 1 {
			t.Fatalf("files announced: %v", files)
		}
		u, err := url.Parse(files[0])
		if err != nil || u.Host != front {
			t.Fatalf("file link %q: not through the balancer (%s)", files[0], front)
		}
		// The session took its instance's only ready kernel: until the pool refills, that
		// instance is out of the balancer's ready backend.
		c.waitInRotation()
		for _, path := range []string{u.RequestURI(), "/kernel/" + id + "/files/note.txt"} {
			seen := map[string]bool{}
			for range 3 {
				a := c.do(http.MethodGet, path, nil, "")
				if a.status != http.StatusOK || string(a.body) != "written on one instance" {
					t.Errorf("GET %s via %v: %d %q", path, a.via, a.status, a.body)
				}
				seen[a.picked()] = true
			}
			if len(seen) != 3 {
				t.Errorf("GET %s reached %v, want all three instances", path, seen)
			}
		}
	})

	// The Sage cell's own front end: one SockJS connection (its websocket transport) through the
	// balancer, on whichever instance it lands, runs code on a kernel: three connections in turn
	// reach at least two instances that do not own it, which bridge it to the owner.
	t.Run("sockjs", func(t *testing.T) {
		id, owner := c.newKernel()
		defer c.do(http.MethodDelete, "/kernel/"+id, nil, "")
		for i := range 3 {
			ws, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/sockjs/000/page%d/websocket", front, i), nil)
			if err != nil {
				t.Fatalf("SockJS connection %d: %v", i, err)
			}
			msgID := fmt.Sprintf("sj%d", i)
			frame, _ := json.Marshal(map[string]any{"channel": "shell", "header": map[string]any{"msg_type": "execute_request", "msg_id": msgID},
				"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": map[string]any{"code": fmt.Sprintf("print(%d*11)", i+1), "silent": false}})
			text, _ := json.Marshal([]string{id + "/channels," + string(frame)})
			if err := ws.WriteMessage(websocket.TextMessage, text); err != nil {
				t.Fatal(err)
			}
			var stdout string
			for idle := false; !idle; {
				_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
				_, data, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("SockJS connection %d to %s (owned by %s): %v", i, id, owner, err)
				}
				var msgs []string
				if len(data) == 0 || data[0] != 'a' || json.Unmarshal(data[1:], &msgs) != nil {
					continue // open, heartbeat
				}
				for _, m := range msgs {
					_, body, _ := strings.Cut(m, ",")
					var f map[string]any
					_ = json.Unmarshal([]byte(body), &f)
					if parent, _ := f["parent_header"].(map[string]any); parent["msg_id"] != msgID {
						continue
					}
					if h, _ := f["header"].(map[string]any); h["msg_type"] == "stream" {
						text, _ := f["content"].(map[string]any)["text"].(string)
						stdout += text
					}
					idle = idle || state(f) == "idle"
				}
			}
			ws.Close()
			if want := fmt.Sprintf("%d\n", (i+1)*11); stdout != want {
				t.Errorf("SockJS connection %d to %s (owned by %s): stdout %q, want %q", i, id, owner, stdout, want)
			}
		}
	})

	// The same front end with sockjs-client falling back to xhr transports (their SockJS session
	// lives on the instance that opened it: the balancer hashes /sockjs/<server>/<session>), on a
	// kernel of any instance.
	t.Run("sockjs-xhr", func(t *testing.T) {
		dir := filepath.Join("..", "..", "gateway", "testdata", "sockjs")
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "sockjs-client", "package.json")); err != nil {
			t.Skipf("%s/node_modules is missing: run make deps", dir)
		}
		node, err := exec.LookPath("node")
		if err != nil {
			t.Skip("node not installed")
		}
		for _, transport := range []string{"xhr-polling", "xhr-streaming"} {
			for i := range 3 {
				id, owner := c.newKernel()
				ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
				cmd := exec.CommandContext(ctx, node, "client.js", "http://"+front+"/", id, transport)
				cmd.Dir = dir
				cmd.WaitDelay = 5 * time.Second
				cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
				out, err := cmd.Output()
				cancel()
				var seen struct {
					Transport, Stdout, Status string
					Idle                      bool
					Matches, Errors           []string
				}
				if jerr := json.Unmarshal(out, &seen); jerr != nil || err != nil || seen.Transport != transport ||
					seen.Stdout != "line 0\nline 1\nline 2\n" || seen.Status != "ok" || !seen.Idle || len(seen.Errors) > 0 ||
					len(seen.Matches) != 1 || seen.Matches[0] != "longname_for_completion" {
					t.Errorf("sockjs-client on %s, page %d, kernel %s of %s: %v %v: %s", transport, i, id, owner, err, jerr, out)
				}
				c.do(http.MethodDelete, "/kernel/"+id, nil, "")
			}
		}
	})

	// The hop: execute round trips on a websocket to the owner and on one to another instance,
	// which forwards it (figures, not assertions).
	t.Run("hop", func(t *testing.T) {
		id, owner := c.newKernel()
		defer c.do(http.MethodDelete, "/kernel/"+id, nil, "")
		var other *localcluster.Instance
		for _, in := range instances {
			if in.ID != owner {
				other = in
				break
			}
		}
		dial := func(in *localcluster.Instance) *websocket.Conn {
			ws, _, err := websocket.DefaultDialer.Dial("ws://"+in.Addr+"/kernel/"+id+"/channels", nil)
			if err != nil {
				t.Fatalf("websocket to %s: %v", in.ID, err)
			}
			return ws
		}
		direct, forwarded := dial(byID[owner]), dial(other)
		defer direct.Close()
		defer forwarded.Close()
		const rounds = 40
		times := map[string][]time.Duration{}
		for i := range 2 * rounds {
			ws, name := direct, "owner"
			if i%2 == 1 {
				ws, name = forwarded, "forwarded"
			}
			began := time.Now()
			if got, _ := execute(t, ws, fmt.Sprintf("h%d", i), "print(1)"); got != "1\n" {
				t.Fatalf("%s: stdout %q", name, got)
			}
			times[name] = append(times[name], time.Since(began))
		}
		for _, name := range []string{"owner", "forwarded"} {
			d := times[name]
			slices.Sort(d)
			t.Logf("figure: execute round trip via %s: p50 %v, p99 %v (%d rounds)", name, d[len(d)/2].Round(10*time.Microsecond), d[len(d)*99/100].Round(10*time.Microsecond), len(d))
		}
	})

	// @jupyterlab/services (as JupyterLab and Thebe use it) through the balancer: kernels and
	// notebooks started on one instance and driven through all three.
	t.Run("jupyterlab", func(t *testing.T) {
		dir := filepath.Join("..", "..", "gateway", "testdata", "jupyterlab")
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@jupyterlab", "services", "package.json")); err != nil {
			t.Skipf("%s/node_modules is missing: run make deps", dir)
		}
		node, err := exec.LookPath("node")
		if err != nil {
			t.Skip("node not installed")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "compat.js")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CELLGATE_URL=http://"+front+"/", "CELLGATE_TOKEN="+testClusterToken)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		var failures []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "not ok") {
				failures = append(failures, line)
			}
		}
		if err != nil || len(failures) > 0 {
			t.Errorf("@jupyterlab/services through haproxy: %v\n%s", err, out)
		} else {
			t.Logf("@jupyterlab/services: %s", strings.TrimSpace(string(out[strings.LastIndex(string(out[:len(out)-1]), "\n")+1:])))
		}
	})

	// A pause longer than the expiry (SIGSTOP, as a long GC pause or a partition would): the
	// others declare the instance dead and answer its session as ended; once it runs again it
	// finds out, ends that session itself (OnLost), registers anew and serves new sessions.
	t.Run("lost", func(t *testing.T) {
		id, owner := c.newKernel()
		in := byID[owner]
		stopped := true
		defer func() {
			if stopped {
				_ = in.Resume()
			}
		}()
		// Every thread of it stopped before the request below: SIGSTOP takes effect
		// asynchronously, and a thread still running would answer it as the owner.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := in.Pause(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// Asked of another instance at once, while the paused owner's record has not expired: that
		// instance forwards the request, and the owner takes the connection (its kernel does) and
		// never answers. The forwarder notices it answers no check (cluster.ForwarderConfig
		// CheckAfter) and the request is answered (503, or ended once the owner is declared
		// dead) instead of waiting for ever. The client's own timeout only catches a hang.
		var other *localcluster.Instance
		for _, o := range instances {
			if o.ID != owner {
				other = o
				break
			}
		}
		patient := &http.Client{Timeout: 3 * time.Minute}
		asked := time.Now()
		resp, err := patient.Get(other.URL() + "kernel/" + id + "/poll?client=lc&wait=0")
		if err != nil {
			t.Fatalf("a long-poll asked of %s for a session of the paused %s: %v", other.ID, owner, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var polled struct{ Ended bool }
		if !(resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusOK && json.Unmarshal(body, &polled) == nil && polled.Ended) {
			t.Errorf("a long-poll for a session of the paused %s: %d %s, want 503 or ended", owner, resp.StatusCode, body)
		}
		t.Logf("figure: a long-poll for a session of a paused instance answered %d after %v (expiry 2 s)", resp.StatusCode, time.Since(asked).Round(time.Millisecond))
		dialer := websocket.Dialer{HandshakeTimeout: 3 * time.Minute}
		asked = time.Now()
		ws, wsResp, err := dialer.Dial("ws://"+other.Addr+"/kernel/"+id+"/channels", nil)
		switch {
		case err == nil:
			dead := readUntil(t, ws, func(f map[string]any) bool { return state(f) == "dead" })
			ws.Close()
			t.Logf("figure: a websocket to a session of a paused instance told %q after %v", dead["content"].(map[string]any)["reason"], time.Since(asked).Round(time.Millisecond))
		case wsResp == nil:
			t.Errorf("a websocket asked of %s for a session of the paused %s: %v", other.ID, owner, err)
		default:
			t.Logf("figure: a websocket to a session of a paused instance refused %d after %v", wsResp.StatusCode, time.Since(asked).Round(time.Millisecond))
		}
		// A request that reaches the paused process (from haproxy, or forwarded before the others
		// know) waits for it: ask with a short timeout, again and again.
		quick := &http.Client{Timeout: 2 * time.Second}
		eventually(t, 60*time.Second, "the paused instance's session answered as ended", func() bool {
			resp, err := quick.Get("http://" + front + "/kernel/" + id + "/poll?client=lc&wait=0")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var p struct{ Ended bool }
			return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&p) == nil && p.Ended
		})
		if err := in.Resume(); err != nil {
			t.Fatal(err)
		}
		stopped = false
		eventually(t, 60*time.Second, owner+" to end its lost session and register anew", func() bool {
			return in.Logs.Find("cluster: this instance was declared dead by the others (missed heartbeats); ending its sessions and registering anew") != nil &&
				len(in.Logs.All("cluster: instance registered")) >= 2
		})
		resp, err = http.Get(in.URL() + "kernel/" + id + "/poll?client=lc&wait=0")
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Ended  bool
			Reason string
		}
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if !p.Ended {
			t.Errorf("%s still serves the session the others ended: %+v", owner, p)
		}
		eventually(t, 60*time.Second, owner+" to serve new sessions again", func() bool {
			for range 3 {
				if _, o := c.newKernel(); o == owner {
					return true
				}
			}
			return false
		})
	})

	// Drain: SIGTERM to the owner of two sessions. Its /readyz turns 503 and new sessions go to
	// the others (the balancer stops picking it; one asked of it directly is placed elsewhere),
	// while its sessions go on executing, through the balancer and another instance too; one
	// deleted by its client ends as usual, and the other is ended at the drain deadline
	// (--drain-timeout) with a reason that says so.
	t.Run("drain", func(t *testing.T) {
		id, owner := c.newKernel()
		in := byID[owner]
		direct := &clusterClient{t: t, front: in.Addr, http: c.http}
		// A second session there, asked of it directly (it places one elsewhere while it has no
		// ready kernel).
		second := ""
		eventually(t, 60*time.Second, "a second session on "+owner, func() bool {
			id2, owner2 := direct.newKernel()
			if owner2 == owner {
				second = id2
				return true
			}
			c.do(http.MethodDelete, "/kernel/"+id2, nil, "")
			return false
		})
		ws := c.dial(id)
		defer ws.Close()
		if got, _ := execute(t, ws, "d1", "print('before')"); got != "before\n" {
			t.Fatalf("stdout %q", got)
		}
		termed := time.Now()
		if err := in.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// Its /readyz (asked directly) turns 503 while its sessions run.
		eventually(t, 30*time.Second, owner+"'s /readyz 503 after SIGTERM", func() bool {
			resp, err := http.Get(in.URL() + "readyz")
			if err != nil {
				t.Fatalf("%s gone with live sessions: %v", owner, err)
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusServiceUnavailable
		})
		t.Logf("figure: %s's /readyz 503 %v after SIGTERM", owner, time.Since(termed).Round(time.Millisecond))
		eventually(t, 60*time.Second, "a new session asked of "+owner+" placed elsewhere", func() bool {
			a := direct.form("/kernel", url.Values{"timeout": {"120"}, "language": {"python"}})
			if a.status != http.StatusOK {
				return false // no other instance has a ready kernel now
			}
			k := decode[struct{ ID string }](t, a)
			c.do(http.MethodDelete, "/kernel/"+k.ID, nil, "")
			if a.served() == owner {
				t.Fatalf("%s started a new session while draining", owner)
			}
			return true
		})
		eventually(t, 30*time.Second, "the balancer to stop picking "+owner, func() bool {
			for range 6 {
				if a := c.do(http.MethodGet, "/kernelspecs", nil, ""); a.picked() == owner {
					return false
				}
			}
			return true
		})
		for range 3 {
			k, o := c.newKernel()
			c.do(http.MethodDelete, "/kernel/"+k, nil, "")
			if o == owner {
				t.Errorf("a new session through the balancer started on %s, which drains", owner)
			}
		}
		// Its sessions go on: the second one through the balancer, which now sends the websocket
		// to another instance, which forwards it.
		ws2 := c.dial(second)
		defer ws2.Close()
		if got, _ := execute(t, ws2, "d2", "print('during')"); got != "during\n" {
			t.Errorf("a session of the draining %s through another instance: stdout %q", owner, got)
		}
		if got, _ := execute(t, ws, "d3", "print('still')"); got != "still\n" {
			t.Errorf("a session of the draining %s: stdout %q", owner, got)
		}
		if resp, err := http.Get(in.URL() + "readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s's /readyz after executions while draining: %v %v", owner, err, resp)
		}
		// One ended by its client; the other at the deadline.
		if a := c.do(http.MethodDelete, "/kernel/"+id, nil, ""); a.status != http.StatusNoContent {
			t.Errorf("DELETE of a session of the draining %s: %d %s", owner, a.status, a.body)
		}
		dead := readUntil(t, ws, func(f map[string]any) bool { return state(f) == "dead" })
		if reason, _ := dead["content"].(map[string]any)["reason"].(string); reason != "deleted by client" {
			t.Errorf("deleted session's client told %q", reason)
		}
		dead = readUntil(t, ws2, func(f map[string]any) bool { return state(f) == "dead" })
		if reason, _ := dead["content"].(map[string]any)["reason"].(string); reason != gateway.EndDrainDeadline {
			t.Errorf("client of the session left at the deadline told %q, want %q", reason, gateway.EndDrainDeadline)
		}
		eventually(t, 30*time.Second, "the session answered as ended by the others", func() bool {
			a := c.do(http.MethodGet, "/kernel/"+second+"/poll?client=dc&wait=0", nil, "")
			if a.status != http.StatusOK {
				return false // the instance leaving may refuse before the others know
			}
			p := decode[struct {
				Ended  bool
				Reason string
			}](t, a)
			return p.Ended && p.Reason == gateway.EndDrainDeadline
		})
		select {
		case <-in.Exited():
			if err := in.Err(); err != nil {
				t.Errorf("%s exited with %v after SIGTERM", owner, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not exit after SIGTERM", owner)
		}
		if in.Logs.Find("cluster: instance left the cluster") == nil {
			t.Errorf("%s did not leave the cluster", owner)
		}
		// The others go on.
		a := c.form("/service", url.Values{"code": {"print('still here')"}, "language": {"python"}})
		if res := decode[struct{ Stdout string }](t, a); res.Stdout != "still here\n" {
			t.Errorf("/service after the drain: %d %s", a.status, a.body)
		}
	})

	// Hard stop: SIGKILL to the owner of a session; its clients are told within the expiry.
	t.Run("kill", func(t *testing.T) {
		id, owner := c.newKernel()
		in := byID[owner]
		ws := c.dial(id)
		defer ws.Close()
		if got, _ := execute(t, ws, "k1", "print('before')"); got != "before\n" {
			t.Fatalf("stdout %q", got)
		}
		killed := time.Now()
		if err := in.Kill(); err != nil {
			t.Fatal(err)
		}
		var reason string
		eventually(t, 60*time.Second, "the killed instance's session answered as ended", func() bool {
			a := c.do(http.MethodGet, "/kernel/"+id+"/poll?client=kc&wait=0", nil, "")
			if a.status != http.StatusOK {
				return false // 503 while its owner is unreachable yet not known dead
			}
			p := decode[struct {
				Ended  bool
				Reason string
			}](t, a)
			reason = p.Reason
			return p.Ended
		})
		t.Logf("figure: clients of %s told its session ended %v after SIGKILL (expiry 2 s)", owner, time.Since(killed).Round(time.Millisecond))
		if !strings.Contains(reason, owner) {
			t.Errorf("clients told %q, want the stopped server named (%s)", reason, owner)
		}
		// A websocket client reconnecting is told the same on iopub.
		eventually(t, 30*time.Second, "a websocket to the session told it is dead", func() bool {
			ws, _, err := websocket.DefaultDialer.Dial("ws://"+front+"/kernel/"+id+"/channels", nil)
			if err != nil {
				return false
			}
			defer ws.Close()
			dead := readUntil(t, ws, func(f map[string]any) bool { return state(f) == "dead" })
			r, _ := dead["content"].(map[string]any)["reason"].(string)
			return strings.Contains(r, owner)
		})
		a := c.form("/service", url.Values{"code": {"print('still here')"}, "language": {"python"}})
		if res := decode[struct{ Stdout string }](t, a); res.Stdout != "still here\n" {
			t.Errorf("/service after the kill: %d %s", a.status, a.body)
		}
	})
}

// eventually polls cond until it holds or the (generous) timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterOptions: --advertise-url needs a long enough --cluster-secret (also from the
// environment), and deploy/cellgate.env is settings cellgate serve accepts.
func TestClusterOptions(t *testing.T) {
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	cases := []struct {
		args []string
		vars map[string]string
		want string // "" for no error
	}{
		{[]string{"--advertise-url", "http://10.0.0.1:8888/"}, nil, "--cluster-secret"},
		{[]string{"--advertise-url", "http://10.0.0.1:8888/", "--cluster-secret", "short"}, nil, "at least 16 bytes"},
		{[]string{"--advertise-url", "http://10.0.0.1:8888/"}, map[string]string{"CELLGATE_CLUSTER_SECRET": testClusterSecret}, ""},
		{[]string{"--cluster-secret", testClusterSecret}, nil, "need --advertise-url"},
		{[]string{"--advertise-url", "http://10.0.0.1:8888/", "--cluster-secret", testClusterSecret, "--cluster-expiry", "1s"}, nil, "two --cluster-heartbeat"},
	}
	for _, tc := range cases {
		_, err := parseOptions(tc.args, env(tc.vars))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v %v: error %v, want %q", tc.args, tc.vars, err, tc.want)
		}
	}
	data, err := os.ReadFile("../../deploy/cellgate.env")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			k, v, _ := strings.Cut(line, "=")
			vars[k] = v
		}
	}
	o, err := parseOptions(nil, env(vars))
	if err != nil {
		t.Fatalf("deploy/cellgate.env: %v", err)
	}
	if o.advertiseURL == "" || o.clusterSecret == "" || !o.trustProxy {
		t.Errorf("deploy/cellgate.env read as %+v", o)
	}
}
