package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway/session"
)

// The other client address of these tests: Linux routes all of 127/8 to
// lo, so a socket bound to 127.0.0.2 is a second peer of a server on
// 127.0.0.1.
var (
	firstAddr  = net.IPv4(127, 0, 0, 1)
	secondAddr = net.IPv4(127, 0, 0, 2)
)

// guard bounds how long a test waits for something that must happen; it
// catches a hang, it measures nothing.
const guard = 60 * time.Second

// served serves env's gateway as cellgate serve does: through
// HTTPServer and Listener, so the timeouts and the connection cap apply.
func (e *testEnv) served(t *testing.T) (*testEnv, *connLimiter) {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = e.gw.HTTPServer(e.gw.Handler())
	ln := e.gw.Listener(ts.Listener)
	ts.Listener = ln
	ts.Start()
	t.Cleanup(ts.Close)
	return &testEnv{t: t, pool: e.pool, gw: e.gw, http: ts}, ln.(*connLimiter)
}

func (e *testEnv) hostPort() string { return strings.TrimPrefix(e.http.URL, "http://") }

// dialFrom opens a TCP connection to the server from source address ip.
func (e *testEnv) dialFrom(t *testing.T, ip net.IP) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	c, err := d.Dial("tcp", e.hostPort())
	if err != nil {
		t.Fatalf("dial from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clientFrom is an HTTP client whose connections come from ip.
func clientFrom(ip net.IP) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: guard}
}

// trickle starts a request whose body will never be complete: its headers
// promise 1000 bytes and one is sent.
func trickle(t *testing.T, c net.Conn) {
	t.Helper()
	_, err := fmt.Fprintf(c, "POST /service HTTP/1.1\r\nHost: cellgate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nc")
	if err != nil {
		t.Fatal(err)
	}
}

// Many slow connections from one address (bodies trickling, never done)
// hold at most MaxConnsPerAddr connections; the next from that address is
// refused with 429, and another address is still served.
func TestSlowConnectionsFromOneAddressLeaveOthersServed(t *testing.T) {
	const capConns, slow = 16, 64
	base := newTestEnv(t, 0, 1, func(c *Config) { c.MaxConnsPerAddr, c.BodyTimeout = capConns, time.Hour })
	env, limiter := base.served(t)

	var refused int
	var held []net.Conn
	for i := 0; i < slow; i++ {
		c := env.dialFrom(t, firstAddr)
		if i < capConns {
			trickle(t, c)
			held = append(held, c)
			continue
		}
		// Over the cap: answered before sending anything, then closed.
		_ = c.SetReadDeadline(time.Now().Add(guard))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d from %s over the cap of %d: %v", i, firstAddr, capConns, err)
		}
		var e apiError
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || e.Error == "" {
			t.Fatalf("connection %d over the cap: %d %v %+v", i, resp.StatusCode, resp.Header, e)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("connection %d over the cap left open: %v", i, err)
		}
		refused++
	}
	if n := limiter.openFrom(firstAddr.String()); n != capConns || refused != slow-capConns {
		t.Errorf("%s holds %d connections, %d refused; want %d held, %d refused", firstAddr, n, refused, capConns, slow-capConns)
	}

	other := clientFrom(secondAddr)
	for _, path := range []string{"/healthz", "/kernelspecs"} {
		resp, err := other.Get(env.url(path))
		if err != nil {
			t.Fatalf("GET %s from %s while %s is at its cap: %v", path, secondAddr, firstAddr, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s from %s while %s is at its cap: %d", path, secondAddr, firstAddr, resp.StatusCode)
		}
	}
	// A connection closed gives its slot back.
	held[0].Close()
	waitFor(t, "the closed connection's slot given back", func() bool { return limiter.openFrom(firstAddr.String()) == capConns-1 })
	resp, err := clientFrom(firstAddr).Get(env.url("/healthz"))
	if err != nil {
		t.Fatalf("GET /healthz from %s once under its cap: %v", firstAddr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz from %s once under its cap: %d", firstAddr, resp.StatusCode)
	}
}

// A body that trickles is cut off after BodyTimeout: the client gets its
// answer and the connection is closed, where before the server waited for
// ever.
func TestBodyTimeoutCutsATrickle(t *testing.T) {
	base := newTestEnv(t, 0, 1, func(c *Config) { c.BodyTimeout = 200 * time.Millisecond })
	env, limiter := base.served(t)
	c := env.dialFrom(t, firstAddr)
	trickle(t, c)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// One byte every 50 ms: each would reset a per-read timeout.
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(guard))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("trickled body: no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "not received within 200ms") {
		t.Errorf("trickled body: %d %s", resp.StatusCode, body)
	}
	// Closed: an EOF, or a reset when the server closed with some of the
	// trickle unread (the writer goes on meanwhile).
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("connection after a body timeout: %v, want it closed", err)
	}
	waitFor(t, "the cut connection forgotten", func() bool { return limiter.openFrom(firstAddr.String()) == 0 })
}

// A keep-alive connection with no request in flight is closed after
// IdleTimeout.
func TestIdleKeepAliveClosed(t *testing.T) {
	base := newTestEnv(t, 0, 1, func(c *Config) { c.IdleTimeout = 100 * time.Millisecond })
	env, _ := base.served(t)
	c := env.dialFrom(t, firstAddr)
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: cellgate\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(guard))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection: %v, want it closed by the server", err)
	}
}

// An upgraded websocket and a held long-poll outlive every server timeout:
// the timeouts bound reading requests, not what a request holds.
func TestWebsocketAndLongPollOutliveServerTimeouts(t *testing.T) {
	const short = 100 * time.Millisecond
	base := newTestEnv(t, 1, 4, func(c *Config) {
		c.HeaderTimeout, c.BodyTimeout, c.IdleTimeout = short, short, short
		c.PollWait = time.Minute
	})
	env, _ := base.served(t)

	k := env.newKernel(url.Values{"timeout": {"60"}})
	ws := env.dialSage(k.ID, "")
	time.Sleep(10 * short) // every timeout would have fired
	id := ws.execute("print(6*7)")
	if out := streamText(ws.until(idleAfter(id))); out != "42\n" {
		t.Errorf("websocket after the timeouts: output %q", out)
	}

	// Catch up first, so that the poll below is held until the late
	// execution's output.
	sess := env.gw.sessions.get(k.ID)
	since := uint64(0)
	for {
		var resp pollResponse
		env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=0&since="+itoa(since), "", "", &resp)
		if len(resp.Messages) == 0 {
			break
		}
		since = resp.Next
	}
	polled := make(chan pollResponse, 1)
	go func() {
		var resp pollResponse
		r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&since="+itoa(since), "", "", &resp)
		if r.StatusCode != http.StatusOK {
			resp.Reason = r.Status
		}
		polled <- resp
	}()
	waitFor(t, "the long-poll held", func() bool { return slices.Contains(sess.Transports(), session.TransportPoll) })
	time.Sleep(10 * short)
	msg := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"late"},"parent_header":{},"metadata":{},"content":{"code":"print('late')","silent":false}}`
	if r := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client=p", "application/json", msg, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("poll send: %d", r.StatusCode)
	}
	select {
	case resp := <-polled:
		late := false
		for _, raw := range resp.Messages {
			var f frame
			_ = json.Unmarshal(raw, &f)
			late = late || f.ParentHeader.MsgID == "late"
		}
		if !late || resp.Reason != "" {
			t.Errorf("held long-poll after the timeouts: %d messages, none of the late execution (%s)", len(resp.Messages), resp.Reason)
		}
	case <-time.After(guard):
		t.Fatal("held long-poll never answered")
	}
}

// connKey counts IPv4 peers by address and IPv6 peers by /64; behind a
// trusted proxy, the peers that may be the proxy are not capped.
func TestConnKey(t *testing.T) {
	for _, tc := range []struct {
		addr       net.Addr
		trustProxy bool
		key        string
		capped     bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}, false, "203.0.113.7", true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:203.0.113.7"), Port: 1}, false, "203.0.113.7", true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, false, "2001:db8:1:2::/64", true},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 1}, false, "2001:db8:1:2::/64", true},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, false, "127.0.0.1", true},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, true, "", false},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 1}, true, "", false},
		{&net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}, true, "203.0.113.7", true},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, false, "", false},
	} {
		key, capped := connKey(tc.addr, tc.trustProxy)
		if key != tc.key || capped != tc.capped {
			t.Errorf("connKey(%v, trustProxy=%v) = %q, %v; want %q, %v", tc.addr, tc.trustProxy, key, capped, tc.key, tc.capped)
		}
	}
}

// With --trust-proxy, connections from the proxy (here loopback) are not
// capped: it speaks for many clients.
func TestTrustedProxyNotCapped(t *testing.T) {
	base := newTestEnv(t, 0, 1, func(c *Config) { c.MaxConnsPerAddr, c.TrustProxy = 2, true })
	env, _ := base.served(t)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for i := 0; i < 4; i++ {
		trickle(t, env.dialFrom(t, firstAddr))
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, env.url("/healthz"), nil)
	resp, err := clientFrom(firstAddr).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("fifth connection from a trusted proxy: %d", resp.StatusCode)
	}
}
