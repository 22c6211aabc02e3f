package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/gateway/session"
)

// endReason waits for session id to end and returns why.
func (e *testEnv) endReason(id string) string {
	e.t.Helper()
	e.waitEnded(id)
	t, ok := e.gw.sessions.tombstone(id)
	if !ok {
		e.t.Fatalf("no tombstone for ended session %s", id)
	}
	return t.reason
}

// logText is the stream text a session's replay log holds.
func logText(sess *session.Session) string {
	msgs, _, _, _ := sess.Replay().Since(0, "", 0)
	var out strings.Builder
	for _, e := range msgs {
		if e.Msg.Header.MsgType == "stream" {
			var st struct{ Text string }
			_ = json.Unmarshal(e.Msg.Content, &st)
			out.WriteString(st.Text)
		}
	}
	return out.String()
}

// The idle deadline runs only while the kernel is idle, and starts when
// the work ends: a one-shot computation longer than the one-shot grace,
// and one longer than a positive timeout, both finish, and the session
// with a timeout can still be used right after.
func TestBusyKernelIsNotIdle(t *testing.T) {
	env := newTestEnv(t, 2, 6, func(c *Config) { c.OneShotGrace = time.Second })
	for _, timeout := range []string{"0", "1"} {
		k := env.newKernel(url.Values{"timeout": {timeout}})
		c := env.dialSage(k.ID, "")
		frames := replyAndIdle(c, c.execute("import time\nfor i in range(3):\n    time.sleep(0.6)\nprint('done')"))
		if got := streamText(frames); got != "done\n" {
			t.Errorf("timeout=%s: a computation longer than the idle timeout got %q (last %+v)", timeout, got, frames[len(frames)-1])
		}
		want := session.EndOneShot
		if timeout != "0" {
			want = session.EndIdle
			if got := streamText(replyAndIdle(c, c.execute("print('again')"))); got != "again\n" {
				t.Errorf("timeout=%s: right after a long computation the session answered %q", timeout, got)
			}
		}
		c.conn.Close()
		if reason := env.endReason(k.ID); reason != want {
			t.Errorf("timeout=%s ended with %q, want %q", timeout, reason, want)
		}
	}
}

// A one-shot cell whose websocket drops and comes back (a network blip)
// finds its session, and its interacts' kernel state, still there; once
// its client is gone for good, it ends.
func TestOneShotSurvivesReconnect(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.DetachGrace = 5 * time.Second })
	k := env.newKernel(url.Values{"timeout": {"0"}})
	c := env.dialSage(k.ID, "")
	replyAndIdle(c, c.execute("x = 41"))
	c.conn.Close()
	again := env.dialSage(k.ID, "")
	if got := streamText(replyAndIdle(again, again.execute("print(x + 1)"))); got != "42\n" {
		t.Errorf("after reconnecting got %q, want the session's state", got)
	}
	again.conn.Close()
	if reason := env.endReason(k.ID); reason != session.EndOneShot {
		t.Errorf("ended with %q, want %q", reason, session.EndOneShot)
	}
}

// A page that is done closes its websocket with a close frame: the
// computed one-shot session ends then, without waiting out the grace that
// a dropped connection gets.
func TestOneShotCleanCloseEndsAtOnce(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.DetachGrace = time.Hour })
	k := env.newKernel(url.Values{"timeout": {"0"}})
	c := env.dialSage(k.ID, "")
	replyAndIdle(c, c.execute("1+1"))
	_ = c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"))
	if reason := env.endReason(k.ID); reason != session.EndOneShot {
		t.Errorf("ended with %q, want %q", reason, session.EndOneShot)
	}
}

// A one-shot client may send its code and leave at once: the session
// ends once that code has run, not before.
func TestOneShotClientLeavingAfterSending(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"0"}})
	c := env.dialSage(k.ID, "")
	sess := env.gw.sessions.get(k.ID)
	c.execute("import time\ntime.sleep(0.5)\nprint('ran')")
	c.conn.Close()
	if reason := env.endReason(k.ID); reason != session.EndOneShot {
		t.Errorf("ended with %q", reason)
	}
	if got := logText(sess); !strings.Contains(got, "ran\n") {
		t.Errorf("the code did not run before the session ended: %q", got)
	}
}

// A Jupyter kernel with a client connected is never culled as idle; once
// the client leaves, the idle timeout applies.
func TestJupyterIdleTimeoutOnlyWhenDetached(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.JupyterIdleTimeout = 300 * time.Millisecond })
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	conn, _, err := websocket.DefaultDialer.Dial(env.wsURL("/api/kernels/"+model.ID+"/channels?session_id="+uuid.NewString()), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Several idle timeouts pass with the client connected and silent.
	time.Sleep(1500 * time.Millisecond)
	if env.gw.sessions.get(model.ID) == nil {
		t.Fatal("a connected Jupyter kernel was culled as idle")
	}
	conn.Close()
	if reason := env.endReason(model.ID); reason != session.EndIdle {
		t.Errorf("ended with %q", reason)
	}
}

// The hard lifespan ends even a busy session.
func TestMaxLifespanEndsBusySession(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxLifespan = time.Second })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	c.execute("while True: pass")
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if reason := frames[len(frames)-1].str("reason"); reason != session.EndLifespan {
		t.Errorf("reason %q", reason)
	}
}

// A timeout over the server's maximum is clamped to it, and a one-shot
// session nobody uses ends after the grace.
func TestTimeoutClampAndOneShotGrace(t *testing.T) {
	env := newTestEnv(t, 2, 6, func(c *Config) { c.MaxTimeout = 400 * time.Millisecond; c.OneShotGrace = 400 * time.Millisecond })
	for _, timeout := range []string{"86400", "0"} {
		k := env.newKernel(url.Values{"timeout": {timeout}})
		if reason := env.endReason(k.ID); reason != session.EndIdle {
			t.Errorf("timeout=%s: ended with %q", timeout, reason)
		}
	}
}

func TestTimeoutMustBeANumberOfSeconds(t *testing.T) {
	env := newTestEnv(t, 0, 2, nil)
	for _, v := range []string{"NaN", "nan", "Inf", "+Inf", "-Inf", "-1", "1e300", "ten"} {
		var e apiError
		resp := env.postForm("/kernel", url.Values{"timeout": {v}}, &e)
		if resp.StatusCode != http.StatusBadRequest || e.Error == "" || e.Message == "" {
			t.Errorf("timeout=%s: %d %+v", v, resp.StatusCode, e)
		}
	}
}

// Replies go to the connection that sent the request, whatever session
// its header names (or none).
func TestRepliesFollowTheSendingConnection(t *testing.T) {
	env := newTestEnv(t, 2, 6, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	id := uuid.NewString()
	data, _ := json.Marshal(map[string]any{
		"channel": "shell", "header": map[string]string{"msg_type": "execute_request", "msg_id": id, "session": "not-the-socket's"},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": map[string]any{"code": "1+1", "silent": false},
	})
	if err := c.conn.WriteMessage(websocket.TextMessage, data); err != nil {
		t.Fatal(err)
	}
	if _, ok := replyTo(replyAndIdle(c, id), id); !ok {
		t.Error("no reply for a request whose header session differs from the socket's")
	}

	// A Jupyter client without session_id, sending with a session of its own.
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	conn, _, err := websocket.DefaultDialer.Dial(env.wsURL("/api/kernels/"+model.ID+"/channels"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	j := &wsClient{t: t, conn: conn, session: "client-made-up"}
	jid := j.execute("2+2")
	if _, ok := replyTo(replyAndIdle(j, jid), jid); !ok {
		t.Error("no reply for a Jupyter client without session_id")
	}
}

// A client that reconnects with the same session_id resumes where it got
// to, losing nothing the old connection wrote but the client never read;
// and a reconnect while the old connection is still open replaces it.
func TestReconnectSameSessionLosesNothing(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	a := env.dialSage(k.ID, "")
	a.until(idleAfter(a.execute("print('zero')")))
	sess := env.gw.sessions.get(k.ID)
	before := sess.Replay().Last()
	// a sends and stops reading: what the gateway writes it never reads.
	id := a.execute("print('one')")
	waitFor(t, "the output of the unread request", func() bool {
		msgs, _, _, _ := sess.Replay().Since(before, a.session, 0)
		for _, e := range msgs {
			if e.Msg.ParentMsgID() == id && e.Msg.Header.MsgType == "status" && strings.Contains(string(e.Msg.Content), "idle") {
				return true
			}
		}
		return false
	})
	// Let the old connection's writer put it into the socket, then drop
	// the connection without reading.
	time.Sleep(300 * time.Millisecond)
	a.conn.Close()
	waitFor(t, "the old connection released", func() bool {
		return !sess.Claimed(a.session)
	})

	redial := func() *wsClient {
		conn, _, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/"+k.ID+"/channels?session_id="+a.session), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &wsClient{t: t, conn: conn, session: a.session}
	}
	b := redial()
	got := replyAndIdle(b, id)
	if txt := streamText(got); !strings.Contains(txt, "one\n") {
		t.Errorf("after reconnecting: %q; want the output the old connection never read", txt)
	}
	if _, ok := replyTo(got, id); !ok {
		t.Error("the reply to the old connection's request did not reach its successor")
	}

	// b is still open: c replaces it.
	c := redial()
	for {
		if _, err := b.read(); err != nil {
			var ce *websocket.CloseError
			if !errorsAs(err, &ce) || !strings.Contains(ce.Text, "replaced") {
				t.Errorf("the replaced connection ended with %v", err)
			}
			break
		}
	}
	if txt := streamText(c.until(idleAfter(c.execute("print('two')")))); !strings.Contains(txt, "two\n") {
		t.Errorf("the new connection got %q", txt)
	}
}

// After a session ends, a poller between requests learns it: GET answers
// ended with the reason, POST 410.
func TestPollAfterEndTellsWhy(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	env.waitEnded(k.ID)
	var resp pollResponse
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p", "", "", &resp); r.StatusCode != http.StatusOK || !resp.Ended || resp.Reason != session.EndDeleted {
		t.Errorf("GET poll after the end: %d %+v", r.StatusCode, resp)
	}
	var e apiError
	if r := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client=p", "application/json", `{"channel":"shell","header":{"msg_type":"kernel_info_request"},"content":{}}`, &e); r.StatusCode != http.StatusGone || !strings.Contains(e.Message, session.EndDeleted) {
		t.Errorf("POST poll after the end: %d %+v", r.StatusCode, e)
	}
	if r := env.do(http.MethodGet, "/kernel/never-was/poll?client=p", "", "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("poll of an unknown kernel: %d", r.StatusCode)
	}
}

func TestTombstonesAreBounded(t *testing.T) {
	var ts tombstones
	now := time.Now()
	for i := range maxTombstone + 10 {
		ts.add(uuid.NewString(), tombstone{at: now.Add(time.Duration(i))})
	}
	if len(ts.byID) != maxTombstone || len(ts.order) != maxTombstone {
		t.Errorf("%d tombstones (%d ordered), want %d", len(ts.byID), len(ts.order), maxTombstone)
	}
	ts.add("late", tombstone{at: now.Add(tombstoneTTL + time.Second)})
	if len(ts.byID) != 1 {
		t.Errorf("%d tombstones after the TTL, want 1", len(ts.byID))
	}
}
