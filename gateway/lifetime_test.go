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
