package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// What holds a connection, and for how long. A client may keep a
// connection for as long as the gateway is doing something for it: a
// request being handled (a /service computation, a lease wait), a long-poll
// being held (PollWait), an upgraded websocket (which has its own pings and
// write deadlines). What it may not do is hold one while sending nothing:
// headers (HeaderTimeout) and a body (BodyTimeout) must arrive in time, and
// a keep-alive connection with no request in flight is closed after
// IdleTimeout. Whatever a client does, one peer address holds at most
// MaxConnsPerAddr connections (Listener), so that no address can use up the
// process's file descriptors and starve the others.
//
// The body's deadline is set by bodyDeadline rather than
// http.Server.ReadTimeout (which net/http also lifts once a body is read,
// and gorilla/websocket on upgrade) so that a client cut off is told why,
// instead of a parse error around "i/o timeout". There is no WriteTimeout:
// it would cut a held long-poll; a client that stops reading holds at most
// its address's share of connections.

// HTTPServer is the http.Server to serve h with: h is the gateway's
// Handler, possibly wrapped (cellgate serve adds the web client). Serve it
// on Listener(ln).
func (s *Server) HTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           bodyDeadline(h, s.cfg.BodyTimeout),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
	}
}

// bodyDeadline gives a request's body d to arrive, from the end of its
// headers. The deadline is lifted once the body has been read to its end,
// so a handler that goes on to hold the request (a long-poll) is not cut by
// it; a body not read to its end keeps it, and the server closes the
// connection when it fails to discard the rest.
func bodyDeadline(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
			// Not a connection of an http.Server (no deadline to set).
			next.ServeHTTP(w, r)
			return
		}
		r.Body = &deadlineBody{ReadCloser: r.Body, timeout: d, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline at the body's end, and says what a
// timeout means.
type deadlineBody struct {
	io.ReadCloser
	timeout time.Duration
	lift    func()
	ended   bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil || b.ended:
	case errors.Is(err, io.EOF):
		b.ended = true
		b.lift()
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.ended = true
		err = fmt.Errorf("request body not received within %v: %w", b.timeout, err)
	}
	return n, err
}

// Listener caps the connections ln hands out per peer address at
// MaxConnsPerAddr: a connection over the cap is answered 429 and closed at
// once, and never reaches the HTTP server.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &connLimiter{Listener: ln, max: s.cfg.MaxConnsPerAddr, trustProxy: s.cfg.TrustProxy, log: s.log, open: map[string]*addrConns{}}
}

// connLimiter is a listener that counts open connections per peer.
type connLimiter struct {
	net.Listener
	max        int
	trustProxy bool
	log        zerolog.Logger

	mu   sync.Mutex
	open map[string]*addrConns
}

type addrConns struct {
	open    int
	refused int // since the address last had no connection open
}

// tooManyConns is the whole answer to a connection over the cap. It is
// written before the client has sent anything the server would read, so
// it is never part of a pipeline.
var tooManyConns = func() []byte {
	body := `{"error":"Too Many Requests","message":"too many open connections from this address"}`
	return fmt.Appendf(nil, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, capped := connKey(c.RemoteAddr(), l.trustProxy)
		if !capped {
			return c, nil
		}
		if l.admit(key) {
			return &countedConn{Conn: c, release: func() { l.release(key) }}, nil
		}
		// A fresh socket's send buffer takes the answer without blocking;
		// the deadline is there in case it does not.
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write(tooManyConns)
		_ = c.Close()
	}
}

// admit counts a new connection from key, unless key is at the cap. The
// first refusal of an episode is logged, not every one: an address at its
// cap may try thousands of times.
func (l *connLimiter) admit(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.open[key]
	if a == nil {
		a = &addrConns{}
		l.open[key] = a
	}
	if a.open < l.max {
		a.open++
		return true
	}
	if a.refused++; a.refused == 1 {
		l.log.Warn().Str("remote", key).Int("max_connections_per_address", l.max).Msg("connection cap reached for an address: refusing its new connections")
	}
	return false
}

func (l *connLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.open[key]
	if a == nil {
		return
	}
	if a.open--; a.open > 0 {
		return
	}
	if a.refused > 0 {
		l.log.Info().Str("remote", key).Int("refused", a.refused).Msg("address back under its connection cap")
	}
	delete(l.open, key)
}

// openFrom is how many connections key holds (for tests).
func (l *connLimiter) openFrom(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a := l.open[key]; a != nil {
		return a.open
	}
	return 0
}

// connKey is the address a connection counts against: the peer's IPv4
// address, or its IPv6 /64 (one subscriber's usual allocation). capped is
// false for a peer that is not TCP, and with trustProxy for a peer whose
// X-Forwarded-For would be believed (loopback, private, link-local: the
// same ranges echo's extractor trusts), which speaks for many clients.
func connKey(addr net.Addr, trustProxy bool) (key string, capped bool) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return "", false
	}
	ip := tcp.IP
	if trustProxy && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast()) {
		return "", false
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String(), true
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String(), true
}

// countedConn gives its slot back when closed, once; an upgraded websocket
// closes it too, as it is what the server hijacks.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
