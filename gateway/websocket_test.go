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
)

func TestReconnectResumesWithoutLossOrRepeat(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	a := env.dialSage(k.ID, "")
	frames := a.until(idleAfter(a.execute("print('one')")))
	last := frames[len(frames)-1].Seq
	a.conn.Close()

	other := env.dialSage(k.ID, "")
	twoID := other.execute("print('two')")
	other.until(idleAfter(twoID))

	again := env.dialSage(k.ID, "since="+itoa(last))
	got := again.until(idleAfter(twoID))
	if got[0].Seq <= last {
		t.Errorf("resumed at %d after %d", got[0].Seq, last)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Errorf("seq %d after %d", got[i].Seq, got[i-1].Seq)
		}
	}
	if txt := streamText(got); txt != "two\n" {
		t.Errorf("after resume got %q, want only the new output", txt)
	}
}

// An upgrade refused (here for its origin) must not touch the live
// connection of the session_id it names: claiming the session_id before
// the upgrade let anyone who knew it disconnect the client.
func TestRefusedUpgradeKeepsTheLiveClient(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.AllowOrigins = []string{"https://good.example"} })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	c.until(idleAfter(c.execute("print('before')")))

	header := http.Header{"Origin": {"https://evil.example"}}
	conn, resp, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/"+k.ID+"/channels?session_id="+c.session), header)
	if err == nil {
		conn.Close()
		t.Fatal("an upgrade from a disallowed origin succeeded")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("upgrade from a disallowed origin: %v, %+v", err, resp)
	}
	if txt := streamText(c.until(idleAfter(c.execute("print('after')")))); txt != "after\n" {
		t.Errorf("live client got %q after the refused upgrade", txt)
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
