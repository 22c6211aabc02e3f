package gateway

import (
	"encoding/json"
	"io"
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
	// The Sage cell's front end reads the new files from payload[0].
	if got := string(reply.Content["payload"]); got != `[{"new_files":[]}]` {
		t.Errorf("payload %s", got)
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
	for _, v := range []string{"NaN", "nan", "-Inf", "-1", "-1e400", "ten", ""} {
		if v == "" {
			v = " "
		}
		var e apiError
		resp := env.postForm("/kernel", url.Values{"timeout": {v}}, &e)
		if resp.StatusCode != http.StatusBadRequest || e.Error == "" || e.Message == "" {
			t.Errorf("timeout=%s: %d %+v", v, resp.StatusCode, e)
		}
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

// timeout=inf, which the Sage cell's linked cells send, and any timeout
// over the cap ask for the longest idle timeout allowed.
func TestTimeoutInfIsTheCap(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxTimeout = 10 * time.Minute })
	for _, v := range []string{"inf", "Infinity", "1e400"} {
		k := env.newKernel(url.Values{"timeout": {v}})
		if got := env.gw.sessions.get(k.ID).IdleLimit(); got != 10*time.Minute {
			t.Errorf("timeout=%s: idle limit %v", v, got)
		}
		env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
		env.waitEnded(k.ID)
	}
}

// method=OPTIONS on POST /kernel (for clients that cannot send OPTIONS)
// answers without starting a kernel; method=DELETE needs the kernel's id.
func TestKernelMethodOptionsStartsNoKernel(t *testing.T) {
	env := newTestEnv(t, 0, 2, nil)
	for _, form := range []url.Values{{"method": {"OPTIONS"}}, {"method": {"options"}, "timeout": {"60"}}} {
		resp := env.postForm("/kernel", form, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Jupyter-Kernel-ID") != "" {
			t.Errorf("%v: %d %v", form, resp.StatusCode, resp.Header)
		}
	}
	var e apiError
	if resp := env.postForm("/kernel", url.Values{"method": {"DELETE"}}, &e); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("method=DELETE without an id: %d %+v", resp.StatusCode, e)
	}
	if n := env.gw.sessions.count(); n != 0 {
		t.Errorf("%d sessions started", n)
	}
	for _, st := range env.pool.Stats() {
		if st.Leased != 0 || st.Starting != 0 || st.Ready != 0 {
			t.Errorf("the pool was asked for a kernel: %+v", st)
		}
	}
}

// frame=on answers with the page the Sage cell answers with: a script that
// posts the JSON answer to the parent page, for successes and errors.
func TestKernelFrameAnswer(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	post := func(form url.Values) (int, string, map[string]string) {
		t.Helper()
		resp, err := http.PostForm(env.url("/kernel"), form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		page := string(body)
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("frame answer is %s: %s", resp.Header.Get("Content-Type"), page)
		}
		inner, _ := strings.CutPrefix(page, "<script>parent.postMessage(")
		literal, ok := strings.CutSuffix(inner, `,"*");</script>`)
		var text string
		var data map[string]string
		if !ok || json.Unmarshal([]byte(literal), &text) != nil || json.Unmarshal([]byte(text), &data) != nil {
			t.Fatalf("frame page %q", page)
		}
		return resp.StatusCode, page, data
	}
	code, _, data := post(url.Values{"frame": {"on"}, "timeout": {"60"}})
	if code != http.StatusOK || data["id"] == "" || !strings.HasPrefix(data["ws_url"], "ws://") || env.gw.sessions.get(data["id"]) == nil {
		t.Errorf("framed start: %d %v", code, data)
	}
	code, _, data = post(url.Values{"frame": {"on"}, "timeout": {"-1"}})
	if code != http.StatusBadRequest || !strings.Contains(data["message"], "seconds") {
		t.Errorf("framed error: %d %v", code, data)
	}
	code, page, _ := post(url.Values{"frame": {""}, "method": {"OPTIONS"}})
	if code != http.StatusOK || !strings.Contains(page, `postMessage("null"`) {
		t.Errorf("framed OPTIONS: %d %s", code, page)
	}
}

// CellSessionID limits the kernels one page holds at once, as the Sage
// cell does; other pages and requests without one are not held back, and
// a kernel's end gives its place back.
func TestKernelsPerCellSession(t *testing.T) {
	env := newTestEnv(t, 2, 6, func(c *Config) { c.MaxKernelsPerCellSession = 2 })
	page := url.Values{"CellSessionID": {"page-a"}, "timeout": {"60"}}
	first := env.newKernel(page)
	env.newKernel(page)
	var e apiError
	resp := env.postForm("/kernel", page, &e)
	if resp.StatusCode != http.StatusTooManyRequests || e.Error != "too_many_kernels_for_cell_session" || !strings.Contains(e.Message, "too many simultaneous kernels") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over the cell-session cap: %d %+v %v", resp.StatusCode, e, resp.Header)
	}
	env.newKernel(url.Values{"CellSessionID": {"page-b"}, "timeout": {"60"}})
	env.do(http.MethodDelete, "/kernel/"+first.ID, "", "", nil)
	waitFor(t, "the ended kernel's place given back", func() bool { return env.gw.cellSessions.count("page-a") == 1 })
	env.newKernel(page)
	if resp := env.postForm("/kernel", url.Values{"CellSessionID": {strings.Repeat("x", maxClientIDBytes+1)}}, &e); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("overlong CellSessionID: %d %+v", resp.StatusCode, e)
	}
}

// On the Sage-cell routes a request that names no language gets Sage when
// a SageMath kernel is installed (the Sage cell's own scripts expect it);
// the Jupyter API keeps the default kernel.
func TestSageCellDefaultKernelIsSage(t *testing.T) {
	env := newTestEnv(t, 0, 3, func(c *Config) { c.SageCellDefaultKernel = "" })
	if _, ok := env.pool.Specs()["sagemath"]; !ok {
		t.Skip("the sagemath kernel is not installed")
	}
	var k struct {
		ID         string `json:"id"`
		KernelName string `json:"kernel_name"`
	}
	if resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &k); resp.StatusCode != http.StatusOK || k.KernelName != "sagemath" {
		t.Errorf("POST /kernel naming no language: %d %+v", resp.StatusCode, k)
	}
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	var res serviceResult
	if resp := env.postForm("/service", url.Values{"code": {"print(factor(1025))"}}, &res); resp.StatusCode != http.StatusOK || res.Stdout != "5^2 * 41\n" {
		t.Errorf("/service naming no language: %d %+v", resp.StatusCode, res)
	}
	var specs struct {
		Default string `json:"default"`
	}
	if env.do(http.MethodGet, "/api/kernelspecs", "", "", &specs); specs.Default != "python3" {
		t.Errorf("the Jupyter API's default is %q", specs.Default)
	}
}

// sendKernelTimeout is code that sends kernel_timeout as the Sage cell's
// kernels send it (misc.reset_kernel_timeout): on iopub, with the running
// request as parent.
func sendKernelTimeout(timeout string) string {
	return "import sys\nsys.stdout.session.send(sys.stdout.pub_thread, 'kernel_timeout', content={'timeout': float(" + timeout + ")}, parent=sys.stdout.parent_header)\nprint('sent')"
}

// A kernel_timeout from the kernel sets the session's idle timeout, as in
// the Sage cell, and is not relayed: shorter at once, longer (up to the
// cap, "inf" being the cap) only while a client is attached.
func TestKernelTimeoutMessage(t *testing.T) {
	env := newTestEnv(t, 2, 6, func(c *Config) { c.MaxTimeout = 10 * time.Minute })

	long := env.newKernel(url.Values{"timeout": {"1"}})
	c := env.dialSage(long.ID, "")
	// (jupyter_client warns on stderr that it sends inf as "inf".)
	frames := c.until(idleAfter(c.execute(sendKernelTimeout("'inf'"))))
	if !strings.HasPrefix(streamText(frames), "sent\n") {
		t.Fatalf("output %q", streamText(frames))
	}
	sess := env.gw.sessions.get(long.ID)
	waitFor(t, "the kernel's timeout applied", func() bool { return sess.IdleLimit() == 10*time.Minute })
	c.conn.Close()
	waitFor(t, "the asked timeout again once the client left", func() bool { return sess.IdleLimit() == time.Second })
	if reason := env.endReason(long.ID); reason != session.EndIdle {
		t.Errorf("ended with %q", reason)
	}

	short := env.newKernel(url.Values{"timeout": {"60"}})
	c = env.dialSage(short.ID, "")
	c.execute(sendKernelTimeout("1"))
	frames = append(frames, c.until(func(f frame) bool { return f.Header.MsgType == "status" && f.str("execution_state") == "dead" })...)
	if dead := frames[len(frames)-1]; dead.str("reason") != session.EndIdle {
		t.Errorf("a 60 s session whose kernel asked for 1 s ended: %+v", dead)
	}
	for _, f := range frames {
		if f.Header.MsgType == session.KernelTimeoutMsgType {
			t.Errorf("kernel_timeout relayed: %+v", f)
		}
	}
}

// tickingInteract makes an interact and a widget that a kernel thread
// keeps changing: widget traffic from the kernel with no one using it.
const tickingInteract = `import threading, time
import ipywidgets as w
from ipywidgets import interact
@interact(x=(0, 10))
def f(x=3):
    print("x is", x)
ticker = w.IntSlider()
def tick():
    i = 0
    while True:
        i += 1
        ticker.value = i % 100
        time.sleep(0.05)
threading.Thread(target=tick, daemon=True).start()
print("ticking")`

// Widget traffic from the kernel does not keep a session alive: an
// interact holds the longest idle timeout only while a client is attached,
// and once nobody is, the session ends on its own idle timeout however
// much the kernel sends.
func TestInteractWithNoClientEndsOnItsIdleTimeout(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxTimeout = 10 * time.Minute })
	k := env.newKernel(url.Values{"timeout": {"1"}})
	c := env.dialSage(k.ID, "")
	frames := c.until(idleAfter(c.execute(tickingInteract)))
	if !strings.Contains(streamText(frames), "ticking") {
		t.Fatalf("output %q", streamText(frames))
	}
	// The kernel keeps sending widget updates after the execution.
	for n := 0; n < 5; {
		if f, err := c.read(); err != nil {
			t.Fatal(err)
		} else if f.Header.MsgType == "comm_msg" {
			n++
		}
	}
	sess := env.gw.sessions.get(k.ID)
	waitFor(t, "the interact's idle timeout while its client is there", func() bool { return sess.IdleLimit() == 10*time.Minute })
	c.conn.Close()
	if reason := env.endReason(k.ID); reason != session.EndIdle {
		t.Errorf("ended with %q", reason)
	}
}
