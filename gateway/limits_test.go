package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/jupytermsg"

	"github.com/cellgate/cellgate/gateway/session"
)

// /service keeps a bounded part of what a computation prints.
func TestServiceOutputIsBounded(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var res serviceResult
	code := "import sys\nfor i in range(300):\n    print('x' * 10000)\n    print('y' * 10000, file=sys.stderr)\nfor i in range(300):\n    display(i)"
	if resp := env.postForm("/service", url.Values{"code": {code}}, &res); resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("%d %+v", resp.StatusCode, res.Error)
	}
	for name, text := range map[string]string{"stdout": res.Stdout, "stderr": res.Stderr} {
		if len(text) > serviceMaxStream+100 || !strings.Contains(text, "output truncated") {
			t.Errorf("%s: %d bytes, marker %v", name, len(text), strings.Contains(text, "output truncated"))
		}
	}
	if len(res.Outputs) != serviceMaxOutputs || !res.OutputsTruncated {
		t.Errorf("%d outputs, truncated %v", len(res.Outputs), res.OutputsTruncated)
	}
}

// The code limit counts characters, as the Sage Cell Server does.
func TestServiceCodeLimitCountsCharacters(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	// 64,900 two-byte characters: 130 kB, under the limit in characters.
	code := "s = '" + strings.Repeat("é", 64900) + "'\nprint(len(s))"
	var res serviceResult
	if resp := env.postForm("/service", url.Values{"code": {code}}, &res); resp.StatusCode != http.StatusOK || res.Stdout != "64900\n" {
		t.Errorf("multi-byte code under the limit: %d %q %s", resp.StatusCode, res.Stdout, res.Error)
	}
	var e apiError
	if resp := env.postForm("/service", url.Values{"code": {strings.Repeat("é", 65001)}}, &e); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("over the limit: %d %+v", resp.StatusCode, e)
	}
}

// A public URL without its trailing slash still gives well-formed links.
func TestPublicURLWithoutTrailingSlash(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.PublicURL = "https://cells.example.org/sub" })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	if k.WSURL != "wss://cells.example.org/sub/" {
		t.Errorf("ws_url %q", k.WSURL)
	}
	if got := env.gw.baseURL(nil).String() + "files/x/y"; got != "https://cells.example.org/sub/files/x/y" {
		t.Errorf("file URL %q", got)
	}
}

// /readyz stays 200 while the pool is fully leased but refilling, and is
// 503 when nothing is ready and nothing can start.
func TestReadyMeansCanServe(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}})
	var body map[string]any
	if r := env.do(http.MethodGet, "/readyz", "", "", &body); r.StatusCode != http.StatusOK {
		t.Errorf("pool leased out and refilling: %d %v", r.StatusCode, body)
	}

	full := newTestEnv(t, 1, 1, nil)
	full.waitWarm()
	full.newKernel(url.Values{"timeout": {"60"}})
	if r := full.do(http.MethodGet, "/readyz", "", "", &body); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("pool at its cap with nothing ready: %d %v", r.StatusCode, body)
	}
}

// Upgrade failures and unexpected errors answer in the JSON error shape,
// and internal error text stays in the log.
func TestErrorsAreJSONAndKeepInternalsIn(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	var e apiError
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/channels", "", "", &e); r.StatusCode != http.StatusBadRequest || e.Message == "" {
		t.Errorf("plain GET of a websocket: %d %+v", r.StatusCode, e)
	}
	bad := http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"7"}}
	r := env.doWith(http.MethodGet, "/kernel/"+k.ID+"/channels", bad, "", &e)
	if r.StatusCode != http.StatusBadRequest || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") || e.Message == "" {
		t.Errorf("failed upgrade: %d %s %+v", r.StatusCode, r.Header.Get("Content-Type"), e)
	}

	rec := httptest.NewRecorder()
	c := env.gw.echo.NewContext(httptest.NewRequest(http.MethodGet, "/x", nil), rec)
	env.gw.errorHandler(errors.New("dial tcp 10.0.0.7:27017: secret internal detail"), c)
	var got apiError
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "secret") || got.RequestID == "" {
		t.Errorf("internal error answered %d %s", rec.Code, rec.Body)
	}
}

// The HTTP body limit answers 413 JSON.
func TestBodyLimit(t *testing.T) {
	env := newTestEnv(t, 0, 2, func(c *Config) { c.MaxMessageBytes = 1 << 10 })
	var e apiError
	r := env.do(http.MethodPost, "/permalink", "application/json", `{"code":"`+strings.Repeat("x", 4<<10)+`"}`, &e)
	if r.StatusCode != http.StatusRequestEntityTooLarge || e.Error == "" {
		t.Errorf("oversized body: %d %+v", r.StatusCode, e)
	}
}

// A poll with nothing to say answers after its wait, capped by the
// server's, and a wait that is not a number is refused.
func TestPollWait(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.PollWait = 200 * time.Millisecond })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	var first pollResponse
	env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=0", "", "", &first)
	for _, wait := range []string{"0.05", "3600"} {
		var resp pollResponse
		r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&since="+itoa(first.Next)+"&wait="+wait, "", "", &resp)
		if r.StatusCode != http.StatusOK || len(resp.Messages) != 0 || resp.Next != first.Next || resp.Ended {
			t.Errorf("wait=%s: %d %+v", wait, r.StatusCode, resp)
		}
	}
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=NaN", "", "", nil); r.StatusCode != http.StatusBadRequest {
		t.Errorf("wait=NaN: %d", r.StatusCode)
	}
}

// Past the pending-execution cap executions still run, and the client is
// told that what the gateway adds is not recorded.
func TestPendingExecutionCap(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxPendingExecutions = 2 })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	files := map[string]any{"_sagecell_files": "sys._sage_.new_files()"}
	var ids []string
	for _, code := range []string{"import time\ntime.sleep(0.5)", "1", "2", "print('ran')"} {
		ids = append(ids, c.send("shell", "execute_request", map[string]any{"code": code, "silent": false, "user_expressions": files}))
	}
	var frames []frame
	for _, id := range ids {
		frames = append(frames, replyAndIdle(c, id)...)
	}
	for i, id := range ids {
		reply, _ := replyTo(frames, id)
		answered := strings.Contains(string(reply.Content["user_expressions"]), session.FilesRequest)
		if answered != (i < 2) {
			t.Errorf("execution %d: _sagecell_files answered %v", i, answered)
		}
	}
	if !strings.Contains(streamText(frames), "ran\n") || !strings.Contains(streamText(frames), "not recorded") {
		t.Errorf("output %q", streamText(frames))
	}
}

// Drain gives up at its context's deadline.
func TestDrainHonoursItsContext(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.newKernel(url.Values{"timeout": {"60"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := env.gw.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("drain with a cancelled context: %v", err)
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

// The series operators watch carry data: kernel starts (the first fill
// included), storage latency by op, the permalink queue, sessions by
// transport.
func TestMetricsCarryData(t *testing.T) {
	env, _ := newStorageEnv(t)
	env.waitWarm()
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	_, _, links := execFiles(c, "open('m.txt', 'w').write('m')")
	if len(links) != 1 {
		t.Fatalf("links %+v", links)
	}
	fetch(t, links[0].URL)
	var created struct{ Query string }
	env.postForm("/permalink", url.Values{"code": {"1"}}, &created)
	env.do(http.MethodGet, "/permalink?q="+created.Query, "", "", nil)
	env.do(http.MethodGet, "/readyz", "", "", nil)
	for _, series := range []string{
		`cellgate_kernel_start_seconds_count{kernel="python3",result="ok"}`,
		`cellgate_storage_seconds_count{op="upload"}`,
		`cellgate_storage_seconds_count{op="permalink_save"}`,
		`cellgate_storage_seconds_count{op="permalink_lookup"}`,
		`cellgate_storage_seconds_count{op="file_open"}`,
		`cellgate_storage_seconds_count{op="ping"}`,
		`cellgate_sessions_by_transport{transport="websocket"}`,
	} {
		if v, ok := env.metricValue(series); !ok || v < 1 {
			t.Errorf("%s = %v (present %v)", series, v, ok)
		}
	}
	if _, ok := env.metricValue("cellgate_permalink_queue_depth"); !ok {
		t.Error("cellgate_permalink_queue_depth missing")
	}
}
