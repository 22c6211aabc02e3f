package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/kernelpool"
)

func TestSageCellExecute(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}, "accepted_tos": {"true"}})
	if !strings.HasPrefix(k.WSURL, "ws://127.0.0.1:") || !strings.HasSuffix(k.WSURL, "/") {
		t.Errorf("ws_url %q", k.WSURL)
	}
	c := env.dialSage(k.ID, "")
	id := c.send("shell", "execute_request", map[string]any{
		"code": "print(1+1)\n6*7", "silent": false, "allow_stdin": false,
		"user_expressions": map[string]string{"_sagecell_files": "sys._sage_.new_files()"},
	})
	frames := c.until(idleAfter(id))
	if got := streamText(frames); got != "2\n" {
		t.Errorf("stdout %q", got)
	}
	result, ok := find(frames, "execute_result")
	if !ok || !strings.Contains(string(result.Content["data"]), `"42"`) || result.Channel != "iopub" {
		t.Errorf("execute_result %+v", result)
	}
	// The reply may come just after idle.
	reply, ok := find(frames, "execute_reply")
	if !ok {
		reply = c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" })[0]
	}
	if reply.Channel != "shell" || reply.str("status") != "ok" {
		t.Errorf("reply %+v", reply)
	}
	var exprs map[string]map[string]any
	_ = json.Unmarshal(reply.Content["user_expressions"], &exprs)
	if exprs["_sagecell_files"]["status"] != "ok" {
		t.Errorf("_sagecell_files not answered: %s", reply.Content["user_expressions"])
	}
	for i := 1; i < len(frames); i++ {
		if frames[i].Seq <= frames[i-1].Seq {
			t.Fatalf("seq not increasing: %d then %d", frames[i-1].Seq, frames[i].Seq)
		}
	}
}

func TestOneShotSessionEndsWhenDoneAndClientGone(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"0"}})
	c := env.dialSage(k.ID, "")
	c.until(idleAfter(c.execute("1+1")))
	if env.gw.sessions.get(k.ID) == nil {
		t.Fatal("one-shot session ended while its client was attached")
	}
	c.conn.Close()
	env.waitEnded(k.ID)
}

func TestIdleTimeoutEndsSessionAndTellsClient(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"1"}})
	c := env.dialSage(k.ID, "")
	frames := c.until(func(f frame) bool { return f.Header.MsgType == "status" && f.str("execution_state") == "dead" })
	dead := frames[len(frames)-1]
	if dead.str("reason") != session.EndIdle || dead.Channel != "iopub" {
		t.Errorf("dead status %+v", dead)
	}
	_, err := c.read()
	var closeErr *websocket.CloseError
	if !errorsAs(err, &closeErr) || closeErr.Code != websocket.CloseNormalClosure || !strings.Contains(closeErr.Text, session.EndIdle) {
		t.Errorf("close: %v", err)
	}
	env.waitEnded(k.ID)
	if resp := env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE of an ended kernel: %d", resp.StatusCode)
	}
}

func TestSharedSessionFanOutAndLateJoin(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	a := env.dialSage(k.ID, "")
	b := env.dialSage(k.ID, "")
	id := a.execute("print('shared')")
	fa := replyAndIdle(a, id)
	fb := b.until(idleAfter(id))
	if streamText(fa) != "shared\n" || streamText(fb) != "shared\n" {
		t.Errorf("both clients must see iopub: a %q b %q", streamText(fa), streamText(fb))
	}
	// b must never get a's reply. It reads the session in order, so a's
	// reply, had it been routed to b, comes before the end of b's own
	// request.
	id2 := b.execute("print('b')")
	fb = append(fb, replyAndIdle(b, id2)...)
	if _, ok := replyTo(fb, id); ok {
		t.Error("reply delivered to a client that did not ask")
	}
	if _, ok := replyTo(fb, id2); !ok {
		t.Error("b did not get the reply to its own request")
	}
	late := env.dialSage(k.ID, "")
	replayed := late.until(idleAfter(id2))
	if got := streamText(replayed); got != "shared\nb\n" {
		t.Errorf("late joiner replay %q", got)
	}
}

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

func TestLongPolling(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"0"}})
	client := "poller"
	msg := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"m1"},"parent_header":{},"metadata":{},"content":{"code":"print('polled')","silent":false}}`
	var sent map[string]int
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client="+client, "application/json", msg, &sent); resp.StatusCode != http.StatusAccepted || sent["sent"] != 1 {
		t.Fatalf("poll send: %d %v", resp.StatusCode, sent)
	}
	var out string
	since := uint64(0)
	var lastSeq uint64
	replied, idle := false, false
	for polls := 0; !replied || !idle; polls++ {
		if polls == 100 {
			t.Fatalf("no reply and idle status after %d polls (output %q)", polls, out)
		}
		var resp pollResponse
		env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client="+client+"&since="+itoa(since)+"&wait=5", "", "", &resp)
		for _, raw := range resp.Messages {
			var f frame
			_ = json.Unmarshal(raw, &f)
			if f.Seq <= lastSeq {
				t.Fatalf("seq %d repeated or out of order after %d", f.Seq, lastSeq)
			}
			lastSeq = f.Seq
			if f.ParentHeader.MsgID != "m1" {
				continue
			}
			if f.Header.MsgType == "stream" {
				out += f.str("text")
			}
			replied = replied || f.Header.MsgType == "execute_reply"
			idle = idle || f.Header.MsgType == "status" && f.str("execution_state") == "idle"
		}
		since = resp.Next
	}
	if out != "polled\n" {
		t.Errorf("polled output %q", out)
	}
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client="+client, "application/json", msg, nil); resp.StatusCode != http.StatusGone {
		t.Errorf("send after end: %d, want 410", resp.StatusCode)
	}
}

func TestBadClientInputGetsErrorAndOthersCarryOn(t *testing.T) {
	env := newTestEnv(t, 2, 6, func(c *Config) { c.MaxMessageBytes = 64 << 10 })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	bystander := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	bad := []string{
		`{not json`,
		`{"channel":"nowhere","header":{"msg_type":"execute_request"},"content":{}}`,
		`{"channel":"iopub","header":{"msg_type":"stream"},"content":{}}`,
		`{"channel":"shell","header":{},"content":{}}`,
		`[]`,
	}
	// The session's buffered output (and any status) may come first:
	// only the gateway's errors are the answer.
	for _, b := range bad {
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(b)); err != nil {
			t.Fatal(err)
		}
		frames := c.until(func(f frame) bool { return f.Channel == "gateway" })
		if f := frames[len(frames)-1]; f.Message == "" || f.Error == "" {
			t.Errorf("%s: got %+v; want a gateway error", b, f)
		}
	}
	// Unknown message types would be dropped by the kernel in silence.
	c.send("shell", "no_such_request", map[string]any{})
	frames := c.until(func(f frame) bool { return f.Channel == "gateway" })
	if f := frames[len(frames)-1]; !strings.Contains(f.Message, "no_such_request") {
		t.Errorf("unknown msg_type: %+v", f)
	}
	c.until(idleAfter(c.execute("print('still fine')")))

	if resp := env.do(http.MethodGet, "/kernel/not-a-kernel/channels", "", "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown kernel: %d", resp.StatusCode)
	}
	// An oversized frame closes only that connection.
	huge := strings.Repeat("x", 100<<10)
	_ = c.conn.WriteMessage(websocket.TextMessage, []byte(`{"channel":"shell","content":{"code":"`+huge+`"}}`))
	for {
		if _, err := c.read(); err != nil {
			break
		}
	}
	other := env.dialSage(bystander.ID, "")
	if got := streamText(other.until(idleAfter(other.execute("print('ok')")))); got != "ok\n" {
		t.Errorf("bystander got %q", got)
	}
	again := env.dialSage(k.ID, "")
	again.until(idleAfter(again.execute("1")))
}

func TestKernelKilledMidComputation(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	id := c.execute("while True: pass")
	c.until(func(f frame) bool { return f.ParentHeader.MsgID == id && f.str("execution_state") == "busy" })
	sess := env.gw.sessions.get(k.ID)
	syscall.Kill(-sess.Kernel().Pid(), syscall.SIGKILL)
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if reason := frames[len(frames)-1].str("reason"); !strings.HasPrefix(reason, session.EndKernel) {
		t.Errorf("reason %q", reason)
	}
	env.waitEnded(k.ID)
	// The server carries on.
	next := env.newKernel(url.Values{"timeout": {"60"}})
	c2 := env.dialSage(next.ID, "")
	c2.until(idleAfter(c2.execute("1")))
	// Messages to the dead session get an error, not silence.
	var e apiError
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client=x", "application/json", `{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":"1"}}`, &e); resp.StatusCode != http.StatusGone || !strings.Contains(e.Message, session.EndKernel) {
		t.Errorf("message to dead kernel: %d %+v", resp.StatusCode, e)
	}
}

func TestFloodIsBoundedAndInterruptible(t *testing.T) {
	const maxMsg = 256 << 10
	env := newTestEnvWith(t, 1, 4, func(c *Config) { c.ReplayMessages = 200; c.ReplayBytes = 1 << 20 },
		func(k *kernelpool.KernelConfig) { k.MaxMessageBytes = maxMsg })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	// Unflushed prints pile up into huge messages, flushed ones into many.
	id := c.execute("import itertools\nfor i in itertools.count():\n    print('x' * 10000, flush=i % 2 == 0)")
	sess := env.gw.sessions.get(k.ID)
	// Let the kernel flood, while this client does not read, until it has
	// written many times what the buffer holds.
	waitFor(t, "the flood overrunning the replay buffer", func() bool { return sess.Replay().Last() > 5*200 })
	n, size := sess.Replay().Held()
	if n > 200 || size > 1<<20+maxMsg {
		t.Errorf("replay log holds %d messages, %d bytes after the overrun: over its bounds", n, size)
	}
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/interrupt", "", "", nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("interrupt: %d", resp.StatusCode)
	}
	frames := c.until(func(f frame) bool {
		return f.Header.MsgType == "error" || (f.ParentHeader.MsgID == id && f.str("execution_state") == "idle")
	})
	if !strings.Contains(streamText(frames), "messages of output were dropped") {
		t.Error("a client that fell behind was not told what it missed")
	}
	c.until(idleAfter(c.execute("print('after')")))
}

func TestClientAndServerCaps(t *testing.T) {
	capped := newTestEnv(t, 1, 2, func(c *Config) { c.MaxKernelsPerAddr = 1; c.MaxKernelsPerClient = 1 })
	capped.newKernel(url.Values{"timeout": {"60"}})
	var e apiError
	resp := capped.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || e.Message == "" {
		t.Errorf("per-address cap: %d %+v", resp.StatusCode, e)
	}

	env := newTestEnv(t, 1, 2, func(c *Config) { c.MaxKernelsPerClient = 1; c.LeaseTimeout = 300 * time.Millisecond })
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}, "client_id": {"app-1"}})
	resp = env.postForm("/kernel", url.Values{"timeout": {"60"}, "client_id": {"app-1"}}, &e)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(e.Message, "app-1") {
		t.Errorf("per-client_id cap: %d %+v", resp.StatusCode, e)
	}
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}, "client_id": {"app-2"}})
	resp = env.postForm("/kernel", url.Values{"timeout": {"60"}}, &e)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("server at capacity: %d %+v", resp.StatusCode, e)
	}
	resp = env.postForm("/kernel", url.Values{"kernel_name": {"cobol"}}, &e)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "python3") {
		t.Errorf("unknown kernel: %d %+v", resp.StatusCode, e)
	}
}

func TestServiceLimits(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.ServiceTimeout = 2 * time.Second })
	var e apiError
	resp := env.postForm("/service", url.Values{"code": {strings.Repeat("1", 65001)}}, &e)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized code: %d %+v", resp.StatusCode, e)
	}
	var res serviceResult
	env.postForm("/service", url.Values{"code": {"while True: pass"}}, &res)
	if res.Success || !strings.Contains(res.Error, "limit") {
		t.Errorf("runaway computation: %+v", res)
	}
	var ok serviceResult
	env.do(http.MethodPost, "/service", "application/json", `{"code":"print('json')"}`, &ok)
	if !ok.Success || ok.Stdout != "json\n" {
		t.Errorf("JSON body: %+v", ok)
	}
	// A raw ';' in a form body (curl -d 'code=a; b') is not readable: say
	// so, rather than "missing code".
	var bad apiError
	resp = env.do(http.MethodPost, "/service", "application/x-www-form-urlencoded", "code=import os; print(1)", &bad)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(bad.Message, "form body") {
		t.Errorf("unreadable form: %d %+v", resp.StatusCode, bad)
	}
}

func TestDrainEndsSessionsClearly(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	pid := env.gw.sessions.get(k.ID).Kernel().Pid()
	done := make(chan error)
	go func() { done <- env.gw.Drain(t.Context()) }()
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if frames[len(frames)-1].str("reason") != session.EndShutdown {
		t.Errorf("drain reason %+v", frames[len(frames)-1])
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Error("kernel process still alive after drain")
	}
	var e apiError
	if resp := env.postForm("/kernel", url.Values{}, &e); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("new session while draining: %d", resp.StatusCode)
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
