package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
)

// fakeCluster is a Cluster of this instance and one other ("peer"), which owns the session
// "theirs"; "gone" ended when its owner died. It records what the gateway tells it.
type fakeCluster struct {
	mu        sync.Mutex
	claims    map[string]string // session → address
	releases  map[string]string // session → reason
	forwarded []string          // "path client"
	elsewhere int               // SessionsOf adds this
	placeTo   *Peer             // Place's answer; nil: no other instance has a ready kernel
	owners    map[string]Peer   // sessions of other instances reached for real (DialWebsocket)
	dials     int
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{claims: map[string]string{}, releases: map[string]string{}}
}

func (f *fakeCluster) ID() string                                { return "self" }
func (f *fakeCluster) Middleware(next http.Handler) http.Handler { return next }
func (f *fakeCluster) ForwardedClient(r *http.Request) (string, bool) {
	if r.Header.Get("Test-Forwarded") != "" {
		return r.Header.Get("Test-Forwarded"), true
	}
	return "", false
}

func (f *fakeCluster) Locate(_ context.Context, id string) (Location, error) {
	f.mu.Lock()
	p, ok := f.owners[id]
	f.mu.Unlock()
	if ok {
		return Location{Owner: &p}, nil
	}
	switch id {
	case "theirs":
		return Location{Owner: &Peer{ID: "peer", URL: "http://peer.invalid/"}}, nil
	case "gone":
		return Location{Ended: true, Reason: "the server running this kernel (peer) stopped"}, nil
	}
	return Location{}, nil
}

// Forward records the request, and sends it for real to a peer of owners (a gateway of its own,
// which runs without a cluster); any other peer's answer is made up.
func (f *fakeCluster) Forward(w http.ResponseWriter, r *http.Request, peer Peer, client string) error {
	f.mu.Lock()
	f.forwarded = append(f.forwarded, r.URL.Path+" "+client)
	f.mu.Unlock()
	w.Header().Add(InstanceHeader, peer.ID)
	if strings.HasPrefix(peer.URL, "http://127.0.0.1:") {
		target, err := url.Parse(peer.URL)
		if err != nil {
			return err
		}
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "answered by "+peer.ID)
	return nil
}

func (f *fakeCluster) Claim(_ context.Context, id, addr string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claims[id] = addr
	return nil
}

func (f *fakeCluster) Release(_ context.Context, id, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases[id] = reason
	return nil
}

func (f *fakeCluster) SessionsOf(_ context.Context, addr string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.elsewhere
	for id, a := range f.claims {
		if _, ended := f.releases[id]; a == addr && !ended {
			n++
		}
	}
	return n, nil
}

func (f *fakeCluster) Place(context.Context, string) (Peer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.placeTo == nil {
		return Peer{}, false
	}
	return *f.placeTo, true
}

// DialWebsocket dials the peer's own server, unsigned (it runs without a cluster).
func (f *fakeCluster) DialWebsocket(ctx context.Context, peer Peer, uri, _, _ string) (*websocket.Conn, error) {
	f.mu.Lock()
	f.dials++
	f.mu.Unlock()
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(strings.TrimSuffix(peer.URL, "/"), "http")+uri, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPeerUnreachable, err)
	}
	return conn, nil
}

func (f *fakeCluster) SetLoad(int, map[string]int)           {}
func (f *fakeCluster) Peers(context.Context) ([]Peer, error) { return nil, nil }

// TestClusterRoutesSessions: with a Cluster, a session this instance does not hold is forwarded
// to its owner, answered as ended when it ended elsewhere (poll ended with the reason, 410 to a
// POST, a websocket told status dead), and unknown otherwise; its own sessions are claimed with
// the client's address before their id is answered and released with their end reason; the
// per-address cap counts the address's sessions on other instances; a forwarded request is
// answered here with the client address the forwarding instance vouches for.
func TestClusterRoutesSessions(t *testing.T) {
	fc := newFakeCluster()
	env := newTestEnv(t, 1, 4, func(c *Config) { c.Cluster = fc; c.MaxKernelsPerAddr = 2 })

	// Owned elsewhere: forwarded, with the client's address.
	resp, err := http.Get(env.url("/kernel/theirs/poll?client=c"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "answered by peer" || strings.Join(resp.Header.Values(InstanceHeader), ",") != "self,peer" {
		t.Errorf("session of another instance: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if len(fc.forwarded) != 1 || fc.forwarded[0] != "/kernel/theirs/poll 127.0.0.1" {
		t.Errorf("forwarded %v", fc.forwarded)
	}

	// Ended elsewhere: answered as an ended session.
	var p pollResponse
	if r := env.do(http.MethodGet, "/kernel/gone/poll?client=c&since=7", "", "", &p); r.StatusCode != http.StatusOK || !p.Ended || !strings.Contains(p.Reason, "(peer) stopped") || p.Next != 7 {
		t.Errorf("poll of a session ended elsewhere: %d %+v", r.StatusCode, p)
	}
	if r := env.do(http.MethodPost, "/kernel/gone/poll?client=c", "application/json", "{}", nil); r.StatusCode != http.StatusGone {
		t.Errorf("poll POST to a session ended elsewhere: %d", r.StatusCode)
	}
	ws, _, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/gone/channels"), nil)
	if err != nil {
		t.Fatalf("websocket to a session ended elsewhere: %v", err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := ws.ReadMessage()
	ws.Close()
	var dead frame
	if err != nil || json.Unmarshal(data, &dead) != nil || dead.Channel != "iopub" || dead.str("execution_state") != "dead" || !strings.Contains(dead.str("reason"), "(peer) stopped") {
		t.Errorf("websocket to a session ended elsewhere: %v %s", err, data)
	}
	if r := env.do(http.MethodDelete, "/kernel/gone", "", "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("delete of a session ended elsewhere: %d", r.StatusCode)
	}
	if r := env.do(http.MethodGet, "/kernel/nobody/poll?client=c", "", "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("poll of an unknown session: %d", r.StatusCode)
	}

	// Its own: claimed before answered, released with the reason.
	k := env.newKernel(url.Values{"timeout": {"60"}})
	fc.mu.Lock()
	addr := fc.claims[k.ID]
	fc.mu.Unlock()
	if addr != "127.0.0.1" {
		t.Errorf("session %s claimed with address %q", k.ID, addr)
	}
	// The cap (2) counts the address's session on another instance.
	fc.mu.Lock()
	fc.elsewhere = 1
	fc.mu.Unlock()
	var refused kernelAnswer
	if r := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &refused); r.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a start over the cluster-wide cap: %d %+v", r.StatusCode, refused)
	}
	fc.mu.Lock()
	fc.elsewhere = 0
	fc.mu.Unlock()
	// A request forwarded by another instance is answered here, as its client's.
	req, _ := http.NewRequest(http.MethodPost, env.url("/kernel/"+k.ID+"/interrupt"), nil)
	req.Header.Set("Test-Forwarded", "192.0.2.7")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Errorf("forwarded interrupt: %v %v", err, resp)
	}
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	waitFor(t, "the session released with its reason", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return fc.releases[k.ID] != ""
	})
	fc.mu.Lock()
	if got := fc.releases[k.ID]; got != "deleted by client" {
		t.Errorf("released with %q", got)
	}
	fc.mu.Unlock()

	// Draining: /readyz turns 503 at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := env.gw.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if r := env.do(http.MethodGet, "/readyz", "", "", nil); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d", r.StatusCode)
	}
}

// TestDrainLetsSessionsRun: DrainBy refuses new sessions at once (/readyz 503; a POST /kernel is
// placed on another instance when one has a ready kernel, refused with 503 otherwise) while the
// live sessions go on executing, and returns once they have ended by themselves, long before
// its deadline.
func TestDrainLetsSessionsRun(t *testing.T) {
	fc := newFakeCluster()
	env := newTestEnv(t, 2, 4, func(c *Config) { c.Cluster = fc })
	env.waitWarm()
	a, b := env.newKernel(url.Values{"timeout": {"600"}}), env.newKernel(url.Values{"timeout": {"600"}})
	wa := env.dialSage(a.ID, "")
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		drained <- env.gw.DrainBy(ctx, time.Now().Add(10*time.Minute))
	}()
	waitFor(t, "/readyz 503 once the drain began", func() bool {
		return env.do(http.MethodGet, "/readyz", "", "", nil).StatusCode == http.StatusServiceUnavailable
	})
	if r := env.postForm("/kernel", url.Values{}, nil); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a new session while draining, alone: %d", r.StatusCode)
	}
	fc.mu.Lock()
	fc.placeTo = &Peer{ID: "peer", URL: "http://peer.invalid/"}
	fc.mu.Unlock()
	env.waitWarm() // a kernel ready here too: placed elsewhere because this instance drains
	resp, err := http.PostForm(env.url("/kernel"), url.Values{})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "answered by peer" {
		t.Errorf("a new session while draining, with another instance ready: %d %q", resp.StatusCode, body)
	}
	// The live sessions go on.
	id := wa.execute("print(6*7)")
	if got := streamText(wa.until(idleAfter(id))); got != "42\n" {
		t.Errorf("a session executing while its server drains: stdout %q", got)
	}
	if r := env.do(http.MethodGet, "/readyz", "", "", nil); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz after an execution while draining: %d", r.StatusCode)
	}
	select {
	case err := <-drained:
		t.Fatalf("drain returned while two sessions were live: %v", err)
	default:
	}
	env.do(http.MethodDelete, "/kernel/"+a.ID, "", "", nil)
	env.do(http.MethodDelete, "/kernel/"+b.ID, "", "", nil)
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("drain still waiting after its sessions ended (its deadline is 10 minutes away)")
	}
	for _, id := range []string{a.ID, b.ID} {
		if got := env.endReason(id); got != "deleted by client" {
			t.Errorf("session %s ended with %q", id, got)
		}
	}
}

// TestDrainEndsSessionsAtItsDeadline: a session still live when the drain's deadline passes is
// ended, its client told why (EndDrainDeadline), and released in the cluster with that reason.
func TestDrainEndsSessionsAtItsDeadline(t *testing.T) {
	fc := newFakeCluster()
	env := newTestEnv(t, 1, 4, func(c *Config) { c.Cluster = fc })
	k := env.newKernel(url.Values{"timeout": {"600"}})
	c := env.dialSage(k.ID, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.gw.DrainBy(ctx, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if got := frames[len(frames)-1].str("reason"); got != EndDrainDeadline {
		t.Errorf("client told %q, want %q", got, EndDrainDeadline)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if got := fc.releases[k.ID]; got != EndDrainDeadline {
		t.Errorf("released in the cluster with %q", got)
	}
}

// TestSockJSBridgesKernelsOfOtherInstances: one SockJS connection (the Sage cell's own front
// end) on one instance carries a kernel of that instance and a kernel of another instance,
// bridged over a websocket to its owner: code runs on both, each kernel's output comes on its
// own stream, and a completion asked while the other instance's kernel is the page's latest is
// answered from that kernel on the "complete" stream; a kernel that ended elsewhere is answered
// with its reason.
func TestSockJSBridgesKernelsOfOtherInstances(t *testing.T) {
	owner := newTestEnv(t, 1, 4, nil)
	fc := newFakeCluster()
	here := newTestEnv(t, 1, 4, func(c *Config) { c.Cluster = fc })
	theirs, ours := owner.newKernel(url.Values{"timeout": {"60"}}), here.newKernel(url.Values{"timeout": {"60"}})
	fc.mu.Lock()
	fc.owners = map[string]Peer{theirs.ID: {ID: "peer", URL: owner.http.URL + "/"}}
	fc.mu.Unlock()
	// Their kernel knows a name only it has, for the completion.
	oc := owner.dialSage(theirs.ID, "")
	oc.until(idleAfter(oc.execute("only_on_the_owner = 1")))

	conn, _, err := websocket.DefaultDialer.Dial(here.wsURL("/sockjs/000/"+uuid.NewString()[:8]+"/websocket"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// SockJS framing: "o" opens, "a[...]" carries messages, "h" is a heartbeat.
	var pending []string
	next := func() (stream string, f frame) {
		t.Helper()
		for len(pending) == 0 {
			_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, data, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("SockJS: %v", err)
			}
			if len(data) > 0 && data[0] == 'a' {
				var msgs []string
				if err := json.Unmarshal(data[1:], &msgs); err != nil {
					t.Fatalf("SockJS frame %q: %v", data, err)
				}
				pending = append(pending, msgs...)
			}
		}
		msg := pending[0]
		pending = pending[1:]
		stream, body, _ := strings.Cut(msg, ",")
		if err := json.Unmarshal([]byte(body), &f); err != nil {
			t.Fatalf("message %q: %v", msg, err)
		}
		return stream, f
	}
	send := func(stream, msgType string, content any) string {
		t.Helper()
		id := uuid.NewString()
		data, _ := json.Marshal(map[string]any{
			"channel": "shell", "header": map[string]string{"msg_type": msgType, "msg_id": id, "session": "page"},
			"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": content,
		})
		text, _ := json.Marshal([]string{stream + "," + string(data)})
		if err := conn.WriteMessage(websocket.TextMessage, text); err != nil {
			t.Fatal(err)
		}
		return id
	}
	execute := func(id, code string) string {
		return send(id+"/channels", "execute_request", map[string]any{"code": code, "silent": false, "user_expressions": map[string]any{}, "allow_stdin": false})
	}
	idle := map[string]string{execute(ours.ID, "print('here')"): ours.ID, execute(theirs.ID, "print('there')"): theirs.ID}
	stdout := map[string]string{}
	for len(idle) > 0 {
		stream, f := next()
		id, _, _ := strings.Cut(stream, "/")
		if f.Header.MsgType == "stream" {
			stdout[id] += f.str("text")
		}
		if f.Header.MsgType == "status" && f.str("execution_state") == "idle" && idle[f.ParentHeader.MsgID] == id {
			delete(idle, f.ParentHeader.MsgID)
		}
		if f.Error != "" {
			t.Fatalf("on %s: %s %s", stream, f.Error, f.Message)
		}
	}
	if stdout[ours.ID] != "here\n" || stdout[theirs.ID] != "there\n" {
		t.Errorf("stdout by kernel %q", stdout)
	}
	// The page's latest kernel is theirs: the completion comes from it.
	asked := send("complete", "complete_request", map[string]any{"code": "only_on_the", "cursor_pos": 11})
	for {
		stream, f := next()
		if f.Header.MsgType != "complete_reply" || f.ParentHeader.MsgID != asked {
			continue
		}
		var matches []string
		_ = json.Unmarshal(f.Content["matches"], &matches)
		if stream != "complete" || len(matches) != 1 || matches[0] != "only_on_the_owner" {
			t.Errorf("completion on %q: %q", stream, matches)
		}
		break
	}
	// Ended elsewhere: the page is told why.
	execute("gone", "1")
	for {
		stream, f := next()
		if stream != "gone/channels" {
			continue
		}
		if !strings.Contains(f.Message, "(peer) stopped") {
			t.Errorf("a kernel that ended elsewhere: %+v", f)
		}
		break
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.dials != 1 {
		t.Errorf("%d bridges dialed for one kernel of another instance", fc.dials)
	}
}
