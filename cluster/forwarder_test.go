package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var testSecret = []byte("a cluster secret for tests only")

// seen is what the owner's handler saw of a request, answered as JSON.
type seen struct {
	Method, URI, Host, Body, XFF, Proto string
	Forwarded                           bool
	From, Client                        string
}

// owner is an instance's HTTP server: the Authenticator in front of handler.
func owner(t *testing.T, id string, handler http.Handler) (*httptest.Server, Instance) {
	t.Helper()
	auth, err := NewAuthenticator(AuthConfig{Secret: testSecret, InstanceID: id, Log: testLogger(t)})
	must(t, err)
	srv := httptest.NewServer(auth.Middleware(handler))
	t.Cleanup(srv.Close)
	return srv, Instance{ID: id, URL: srv.URL + "/"}
}

// echoSeen answers what it saw.
func echoSeen(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f, ok := ForwardedFrom(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Owner", "yes")
	w.WriteHeader(http.StatusTeapot)
	_ = json.NewEncoder(w).Encode(seen{Method: r.Method, URI: r.URL.RequestURI(), Host: r.Host, Body: string(body),
		XFF: r.Header.Get("X-Forwarded-For"), Proto: r.Header.Get("X-Forwarded-Proto"), Forwarded: ok, From: f.From, Client: f.Client})
}

// front is the instance the client reached: it forwards every request to `to`, answering 502 itself
// when Forward fails, and reports Forward's errors on errs.
func front(t *testing.T, id string, to Instance) (*httptest.Server, *Forwarder, chan error) {
	t.Helper()
	fwd, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: id, Log: testLogger(t)})
	must(t, err)
	t.Cleanup(fwd.Close)
	errs := make(chan error, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		err := fwd.Forward(w, r, to, host)
		errs <- err
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, fwd, errs
}

func decodeSeen(t *testing.T, resp *http.Response) seen {
	t.Helper()
	defer resp.Body.Close()
	var s seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decode answer (status %d): %v", resp.StatusCode, err)
	}
	return s
}

// TestForwardHTTP: a request forwarded keeps its method, escaped path and query, body and Host,
// gets the owner's status, headers and body back, and arrives authenticated with the client's
// address; an advertise URL with a path prefixes it.
func TestForwardHTTP(t *testing.T) {
	for _, prefix := range []string{"", "/base"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			_, to := owner(t, "owner", http.HandlerFunc(echoSeen))
			to.URL = strings.TrimSuffix(to.URL, "/") + prefix + "/"
			fsrv, _, errs := front(t, "front", to)

			req, _ := http.NewRequest(http.MethodPost, fsrv.URL+"/kernel/a%2Fb%20c/files/x?q=1&z=%20é", strings.NewReader("the body"))
			req.Host = "cells.example.org"
			req.Header.Set("X-Forwarded-Proto", "https") // as the balancer in front would say
			req.Header.Set("X-Forwarded-For", "6.6.6.6") // a client's own claim: replaced
			resp, err := http.DefaultClient.Do(req)
			must(t, err)
			if resp.StatusCode != http.StatusTeapot || resp.Header.Get("X-Owner") != "yes" {
				t.Fatalf("status %d, X-Owner %q", resp.StatusCode, resp.Header.Get("X-Owner"))
			}
			got := decodeSeen(t, resp)
			must(t, <-errs)
			want := seen{Method: "POST", URI: prefix + "/kernel/a%2Fb%20c/files/x?q=1&z=%20é", Host: "cells.example.org",
				Body: "the body", XFF: "127.0.0.1", Proto: "https", Forwarded: true, From: "front", Client: "127.0.0.1"}
			if got != want {
				t.Errorf("owner saw\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

// TestForwardLongPoll: an answer the owner holds and streams reaches the client as it comes, not
// when it ends (each part is read before the owner is let to write the next).
func TestForwardLongPoll(t *testing.T) {
	next := make(chan struct{})
	_, to := owner(t, "owner", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		for i := range 3 {
			if i > 0 {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			io.WriteString(w, "part\n")
			w.(http.Flusher).Flush()
		}
	}))
	fsrv, _, errs := front(t, "front", to)
	resp, err := http.Get(fsrv.URL + "/kernel/k/poll")
	must(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil || line != "part\n" {
			t.Fatalf("part %d: %q, %v", i, line, err)
		}
		if i < 2 {
			next <- struct{}{}
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("trailing %q", rest)
	}
	must(t, <-errs)
}

// TestForwardWebsocket: a websocket upgrade is forwarded (authenticated, with the client's
// address) and frames of both kinds pass both ways until the client closes.
func TestForwardWebsocket(t *testing.T) {
	upgrader := websocket.Upgrader{Subprotocols: []string{"v1.kernel.websocket.jupyter.org"}}
	_, to := owner(t, "owner", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := ForwardedFrom(r.Context())
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		hello, _ := json.Marshal(map[string]any{"forwarded": ok, "from": f.From, "client": f.Client, "path": r.URL.Path})
		if conn.WriteMessage(websocket.TextMessage, hello) != nil {
			return
		}
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if conn.WriteMessage(kind, append([]byte("echo:"), data...)) != nil {
				return
			}
		}
	}))
	fsrv, _, errs := front(t, "front", to)

	dialer := websocket.Dialer{Subprotocols: []string{"v1.kernel.websocket.jupyter.org"}, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := dialer.Dial("ws"+strings.TrimPrefix(fsrv.URL, "http")+"/kernel/k1/channels", nil)
	must(t, err)
	if resp.Header.Get("Sec-Websocket-Protocol") != "v1.kernel.websocket.jupyter.org" {
		t.Errorf("subprotocol %q", resp.Header.Get("Sec-Websocket-Protocol"))
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, hello, err := conn.ReadMessage()
	must(t, err)
	var h map[string]any
	must(t, json.Unmarshal(hello, &h))
	if h["forwarded"] != true || h["from"] != "front" || h["client"] != "127.0.0.1" || h["path"] != "/kernel/k1/channels" {
		t.Errorf("owner's upgrade saw %v", h)
	}
	for i, m := range []struct {
		kind int
		data string
	}{{websocket.TextMessage, `{"channel":"shell"}`}, {websocket.BinaryMessage, "\x00\x01binary\xff"}, {websocket.TextMessage, strings.Repeat("x", 1<<20)}} {
		must(t, conn.WriteMessage(m.kind, []byte(m.data)))
		kind, data, err := conn.ReadMessage()
		must(t, err)
		if kind != m.kind || string(data) != "echo:"+m.data {
			t.Fatalf("frame %d: kind %d, %d bytes %.40q", i, kind, len(data), data)
		}
	}
	must(t, conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")))
	conn.Close()
	select {
	case err := <-errs:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the forwarding handler did not return after the client closed")
	}
}

// TestForwardNeverTwice: a forwarded request is not forwarded again (nothing written, the
// handler answers itself), nor is one that carries the header without the middleware, nor one
// to this instance itself.
func TestForwardNeverTwice(t *testing.T) {
	_, last := owner(t, "last", http.HandlerFunc(echoSeen))
	fwd, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: "middle", Log: testLogger(t)})
	must(t, err)
	loopErr := make(chan error, 1)
	_, middle := owner(t, "middle", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := fwd.Forward(w, r, last, "192.0.2.1")
		loopErr <- err
		if err != nil {
			w.WriteHeader(http.StatusMisdirectedRequest)
		}
	}))
	fsrv, _, errs := front(t, "front", middle)
	resp, err := http.Get(fsrv.URL + "/kernel/k")
	must(t, err)
	resp.Body.Close()
	if err := <-loopErr; !errors.Is(err, ErrLoop) {
		t.Fatalf("forwarding a forwarded request: %v, want ErrLoop", err)
	}
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("status %d: the second hop wrote something", resp.StatusCode)
	}
	must(t, <-errs)

	// The header alone (no middleware in front of the handler) is enough to refuse.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/kernel/k", nil)
	req.Header.Set(HeaderName, "anything")
	if err := fwd.Forward(rec, req, last, ""); !errors.Is(err, ErrLoop) || rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Errorf("request with the header: %v, wrote %d %q", err, rec.Code, rec.Body)
	}
	// To itself.
	if err := fwd.Forward(rec, httptest.NewRequest(http.MethodGet, "/", nil), Instance{ID: "middle", URL: "http://127.0.0.1:1/"}, ""); !errors.Is(err, ErrLoop) {
		t.Errorf("forward to itself: %v, want ErrLoop", err)
	}
}

// TestForwardUnreachable: a target that does not answer is ErrUnreachable, with nothing written.
func TestForwardUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	dead := Instance{ID: "dead", URL: "http://" + l.Addr().String() + "/"}
	l.Close()
	fwd, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: "front", Log: testLogger(t)})
	must(t, err)
	rec := httptest.NewRecorder()
	err = fwd.Forward(rec, httptest.NewRequest(http.MethodGet, "/kernel/k", nil), dead, "192.0.2.1")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Forward to a closed port = %v, want ErrUnreachable", err)
	}
	if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
		t.Errorf("wrote %q %v", rec.Body, rec.Header())
	}
	if err := fwd.Forward(rec, httptest.NewRequest(http.MethodGet, "/", nil), Instance{ID: "x", URL: "not a url"}, ""); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Forward to a bad URL = %v", err)
	}
}

func TestNewForwarderChecks(t *testing.T) {
	if _, err := NewForwarder(ForwarderConfig{Secret: []byte("short"), InstanceID: "a"}); err == nil {
		t.Error("short secret accepted")
	}
	if _, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: "a b"}); err == nil {
		t.Error("bad instance id accepted")
	}
	if _, err := NewAuthenticator(AuthConfig{Secret: nil, InstanceID: "a"}); err == nil {
		t.Error("Authenticator without a secret")
	}
}

// stalledInstance is what a paused process (SIGSTOP) looks like from the network: the kernel
// accepts connections for it and takes what is sent, and nothing ever answers.
func stalledInstance(t *testing.T, id string) Instance {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	return Instance{ID: id, URL: "http://" + l.Addr().String() + "/"}
}

// quickChecks is a Forwarder that checks its targets often: tests must not wait seconds.
func quickChecks(t *testing.T, id string) *Forwarder {
	t.Helper()
	fwd, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: id, Log: testLogger(t),
		CheckAfter: 100 * time.Millisecond, CheckTimeout: 200 * time.Millisecond})
	must(t, err)
	t.Cleanup(fwd.Close)
	return fwd
}

// forwardOrHang runs Forward and fails the test if it has not returned within a minute (it
// waited for ever before the Forwarder checked its targets).
func forwardOrHang(t *testing.T, fwd *Forwarder, w http.ResponseWriter, r *http.Request, to Instance) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fwd.Forward(w, r, to, "192.0.2.1") }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("Forward to %s (accepts, never answers) still waiting after a minute", to.ID)
		return nil
	}
}

// TestForwardToStalledTarget: a request, and a websocket upgrade, forwarded to an instance that
// accepts connections and never answers (paused) end as ErrUnreachable, saying it answered no
// check, with nothing written: the caller answers, instead of the client waiting for ever.
func TestForwardToStalledTarget(t *testing.T) {
	to := stalledInstance(t, "paused")
	fwd := quickChecks(t, "front")
	for _, upgrade := range []bool{false, true} {
		req := httptest.NewRequest(http.MethodGet, "/kernel/k/poll?client=c&wait=0", nil)
		if upgrade {
			req = httptest.NewRequest(http.MethodGet, "/kernel/k/channels", nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		}
		rec := httptest.NewRecorder()
		err := forwardOrHang(t, fwd, rec, req, to)
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, errStalled) {
			t.Errorf("upgrade %v: Forward = %v, want ErrUnreachable for a target that answered no check", upgrade, err)
		}
		if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
			t.Errorf("upgrade %v: wrote %q %v", upgrade, rec.Body, rec.Header())
		}
	}
}

// stallingEchoOwner is an instance that echoes websocket messages until stall is closed, and
// then, as a paused process, reads what it is sent and answers nothing, its checks included.
func stallingEchoOwner(t *testing.T) (Instance, chan struct{}) {
	t.Helper()
	stall := make(chan struct{})
	upgrader := websocket.Upgrader{}
	_, to := owner(t, "owner", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			select {
			case <-stall:
				<-r.Context().Done()
			default:
			}
			return
		}
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil {
				return
			}
			select {
			case <-stall:
				continue // read, never answered
			default:
			}
			if conn.WriteMessage(kind, data) != nil {
				return
			}
		}
	}))
	return to, stall
}

// echoThenStall checks that conn echoes, stalls its owner, and checks that conn is closed rather
// than left silent.
func echoThenStall(t *testing.T, conn *websocket.Conn, stall chan struct{}) {
	t.Helper()
	must(t, conn.WriteMessage(websocket.TextMessage, []byte("before")))
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, data, err := conn.ReadMessage(); err != nil || string(data) != "before" {
		t.Fatalf("echo before the stall: %q %v", data, err)
	}
	close(stall)
	must(t, conn.WriteMessage(websocket.TextMessage, []byte("during")))
	if _, data, err := conn.ReadMessage(); err == nil {
		t.Fatalf("read %q from an owner that answers nothing", data)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the websocket of a stalled owner still open after a minute")
	}
}

// TestForwardedWebsocketOfStalledTarget: a websocket relayed to an owner that then stops
// answering (its frames and its checks) is closed for the client, who reconnects and learns
// what became of the session, rather than sitting on a silent connection for ever.
func TestForwardedWebsocketOfStalledTarget(t *testing.T) {
	to, stall := stallingEchoOwner(t)
	fwd := quickChecks(t, "front")
	fsrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = fwd.Forward(w, r, to, "192.0.2.1")
	}))
	t.Cleanup(fsrv.Close)
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(fsrv.URL, "http")+"/kernel/k/channels", nil)
	must(t, err)
	defer conn.Close()
	echoThenStall(t, conn, stall)
}

// TestDialedWebsocketOfStalledTarget: a websocket of this instance's own to another (a SockJS
// bridge) is closed once that instance stops answering, so the bridge ends (and the page's next
// message finds what became of the kernel) instead of staying silent.
func TestDialedWebsocketOfStalledTarget(t *testing.T) {
	to, stall := stallingEchoOwner(t)
	fwd := quickChecks(t, "front")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := fwd.DialWebsocket(ctx, to, "/kernel/k/channels?session_id=s", "cells.example.org", "192.0.2.1")
	must(t, err)
	defer conn.Close()
	echoThenStall(t, conn, stall)
}

// TestForwardSlowAnswerIsNotCut: an owner that holds an answer across several checks, answering
// them, is left to answer (a long-poll, a /service computation): only a target that answers
// nothing at all has its calls ended.
func TestForwardSlowAnswerIsNotCut(t *testing.T) {
	checked := make(chan struct{}, 64)
	_, to := owner(t, "owner", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			select {
			case checked <- struct{}{}:
			default:
			}
			return
		}
		for range 3 { // held until three checks have come and gone
			select {
			case <-checked:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "held answer")
	}))
	fwd := quickChecks(t, "front")
	rec := httptest.NewRecorder()
	err := forwardOrHang(t, fwd, rec, httptest.NewRequest(http.MethodGet, "/kernel/k/poll?wait=25", nil), to)
	if err != nil || rec.Code != http.StatusOK || rec.Body.String() != "held answer" {
		t.Errorf("Forward = %v, answer %d %q", err, rec.Code, rec.Body)
	}
}
