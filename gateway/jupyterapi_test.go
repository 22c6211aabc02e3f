package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// TestJupyterLabServices drives the Jupyter Server kernel API with the
// unchanged @jupyterlab/services npm package (pinned in
// testdata/jupyterlab/package-lock.json) under Node: kernelspecs, token
// auth, a kernel's life (execute, stdin, interrupt, restart, shutdown) over
// both websocket encodings, and a notebook session. The script prints one
// "ok - ..." / "not ok - ..." line per check.
func TestJupyterLabServices(t *testing.T) {
	dir := filepath.Join("testdata", "jupyterlab")
	node := nodeFor(t, dir, filepath.Join("@jupyterlab", "services"))

	const token = "cellgate-test-token"
	env := newTestEnv(t, 2, 6, func(c *Config) { c.Token = token })
	// Clients come once the server is ready (/readyz). A kernel leased
	// within ~200 ms of becoming ready may not have its stdin connection
	// up yet, and its input_request is lost (a kernelpool race).
	env.waitWarm()

	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "compat.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CELLGATE_URL="+env.url("/"), "CELLGATE_TOKEN="+token)
	cmd.WaitDelay = 5 * time.Second
	// node must not outlive a test binary that panics.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w

	var failures []string
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			t.Log(line)
			if strings.HasPrefix(line, "not ok") {
				failures = append(failures, line)
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()

	start := time.Now()
	err := cmd.Run()
	w.Close()
	<-scanned
	t.Logf("node ran for %s", time.Since(start).Round(time.Millisecond))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("node compat.js timed out after %s", time.Since(start).Round(time.Second))
	}
	if err != nil {
		t.Fatalf("node compat.js: %v\n%s", err, strings.Join(failures, "\n"))
	}
	if len(failures) > 0 {
		t.Fatalf("node exited 0 but reported failures:\n%s", strings.Join(failures, "\n"))
	}
}

// Messages the gateway makes up carry the kernel's own session id, as
// the kernel's messages do.
func TestGatewayMessagesCarryTheKernelSession(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	conn, _, err := websocket.DefaultDialer.Dial(env.wsURL("/api/kernels/"+model.ID+"/channels?session_id="+uuid.NewString()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	j := &wsClient{t: t, conn: conn, session: "client"}
	frames := replyAndIdle(j, j.execute("1"))
	kernelSession := frames[len(frames)-1].Header.Session
	if kernelSession == "" || kernelSession == "client" {
		t.Fatalf("kernel session %q", kernelSession)
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"channel":"shell","header":{"msg_type":"nope"},"content":{}}`)); err != nil {
		t.Fatal(err)
	}
	problem := j.until(func(f frame) bool { return strings.Contains(f.str("text"), "[cellgate]") })
	if s := problem[len(problem)-1].Header.Session; s != kernelSession {
		t.Errorf("gateway error carries session %q, the kernel's is %q", s, kernelSession)
	}
	env.do(http.MethodDelete, "/api/kernels/"+model.ID, "", "", nil)
	dead := j.until(func(f frame) bool { return f.str("execution_state") == jupytermsg.StateDead })
	if s := dead[len(dead)-1].Header.Session; s != kernelSession {
		t.Errorf("dead status carries session %q, the kernel's is %q", s, kernelSession)
	}
}

// A kernel id must not be a way around the Jupyter API's token: the
// Sage-cell routes only see Sage-cell sessions, and the other way round.
func TestKernelIDsStayInTheirAPI(t *testing.T) {
	const token = "secret-token"
	env := newTestEnv(t, 2, 6, func(c *Config) { c.Token = token })
	auth := http.Header{"Authorization": {"token " + token}}
	var model kernelModel
	if resp := env.doWith(http.MethodPost, "/api/kernels", auth, "", &model); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/kernels: %d", resp.StatusCode)
	}
	id := model.ID
	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/kernel/" + id + "/poll?client=x&wait=0", ""},
		{http.MethodPost, "/kernel/" + id + "/poll?client=x", `{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":"print(1)"}}`},
		{http.MethodPost, "/kernel/" + id + "/interrupt", ""},
		{http.MethodGet, "/kernel/" + id + "/files/a.txt", ""},
		{http.MethodDelete, "/kernel/" + id, ""},
	} {
		var e apiError
		if resp := env.do(r.method, r.path, "application/json", r.body, &e); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s without the token: %d %+v", r.method, r.path, resp.StatusCode, e)
		}
	}
	if _, resp, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/"+id+"/channels"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("Sage-cell websocket to a Jupyter kernel: %v %v", err, resp)
	}
	if env.gw.sessions.get(id) == nil {
		t.Fatal("the Jupyter kernel ended through a Sage-cell route")
	}
	sage := env.newKernel(url.Values{"timeout": {"60"}})
	if resp := env.doWith(http.MethodGet, "/api/kernels/"+sage.ID, auth, "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a Sage-cell kernel through the Jupyter API: %d", resp.StatusCode)
	}
}

// A Jupyter kernel whose widgets keep talking is culled as idle once its
// client has gone: widget traffic from the kernel is not activity.
func TestJupyterWidgetTrafficIsNotActivity(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.JupyterIdleTimeout = 500 * time.Millisecond; c.MaxTimeout = 10 * time.Minute })
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	conn, _, err := websocket.DefaultDialer.Dial(env.wsURL("/api/kernels/"+model.ID+"/channels?session_id="+uuid.NewString()), nil)
	if err != nil {
		t.Fatal(err)
	}
	j := &wsClient{t: t, conn: conn, session: "client"}
	if out := streamText(j.until(idleAfter(j.execute(tickingInteract)))); !strings.Contains(out, "ticking") {
		t.Fatalf("output %q", out)
	}
	conn.Close()
	if reason := env.endReason(model.ID); reason != session.EndIdle {
		t.Errorf("ended with %q", reason)
	}
}
