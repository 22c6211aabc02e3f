package storage

import (
	"bytes"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// faultProxy sits between the driver and an embedded database and, on the request that carries
// a chosen marker (bytes of a document being written), stalls it or loses its reply. Tests use it
// to make a database write hang, or fail after the server applied it, at a chosen point and
// without timing.
type faultProxy struct {
	t              testing.TB
	ln             net.Listener
	network, addr  string
	done           chan struct{}
	mu             sync.Mutex
	rules          []*faultRule // not yet fired
	conns          []net.Conn
	wg             sync.WaitGroup
	closeListening sync.Once
}

type faultAction int

const (
	// holdRequest keeps the request from the server until Release.
	holdRequest faultAction = iota
	// dropReply forwards the request and, when the server's reply arrives, cuts the connection
	// instead of passing it on: the write is applied, the client gets a network error.
	dropReply
)

type faultRule struct {
	marker []byte
	action faultAction
	// fired is closed when the request is held (holdRequest), or when its reply was dropped
	// (dropReply: the server has applied it).
	fired   chan struct{}
	release chan struct{}
	// replied is closed, for holdRequest, when the server answered the released request.
	replied     chan struct{}
	releaseOnce sync.Once
}

// Release lets a held request through.
func (r *faultRule) Release() { r.releaseOnce.Do(func() { close(r.release) }) }

// startFaultProxy proxies to e; connect with URI().
func startFaultProxy(t testing.TB, e *Embedded) *faultProxy {
	t.Helper()
	p := &faultProxy{t: t, done: make(chan struct{})}
	if u, err := url.Parse(e.URI()); err == nil && strings.HasPrefix(u.Host, "127.0.0.1:") {
		p.network, p.addr = "tcp", u.Host
	} else {
		p.network, p.addr = "unix", filepath.Join(e.Dir(), embeddedSocketName)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// URI reaches the database through the proxy.
func (p *faultProxy) URI() string {
	return "mongodb://" + p.ln.Addr().String() + "/?directConnection=true"
}

// on arms a rule for the next request containing marker.
func (p *faultProxy) on(marker []byte, action faultAction) *faultRule {
	r := &faultRule{
		marker: bytes.Clone(marker), action: action,
		fired: make(chan struct{}), release: make(chan struct{}), replied: make(chan struct{}),
	}
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r
}

func (p *faultProxy) close() {
	p.closeListening.Do(func() {
		close(p.done)
		_ = p.ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
	})
	p.wg.Wait()
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial(p.network, p.addr)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		c := &proxiedConn{client: client, server: server}
		p.wg.Add(2)
		go p.toServer(c)
		go p.toClient(c)
	}
}

type proxiedConn struct {
	client, server net.Conn
	mu             sync.Mutex
	dropNext       *faultRule // dropReply armed on this connection
	notifyReply    *faultRule // holdRequest released on this connection
}

// match fires the first armed rule whose marker is in window.
func (p *faultProxy) match(window []byte) *faultRule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, r := range p.rules {
		if bytes.Contains(window, r.marker) {
			p.rules = append(p.rules[:i], p.rules[i+1:]...)
			return r
		}
	}
	return nil
}

func (p *faultProxy) longestMarker() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.rules {
		n = max(n, len(r.marker))
	}
	return n
}

func (p *faultProxy) toServer(c *proxiedConn) {
	defer p.wg.Done()
	defer c.server.Close()
	buf := make([]byte, 64<<10)
	var tail []byte // end of the previous read, for markers split between reads
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			data := buf[:n]
			window := append(tail, data...)
			if r := p.match(window); r != nil {
				switch r.action {
				case holdRequest:
					close(r.fired)
					select {
					case <-r.release:
					case <-p.done:
						return
					}
					c.mu.Lock()
					c.notifyReply = r
					c.mu.Unlock()
				case dropReply:
					c.mu.Lock()
					c.dropNext = r
					c.mu.Unlock()
				}
			}
			if _, err := c.server.Write(data); err != nil {
				return
			}
			keep := max(p.longestMarker()-1, 0)
			tail = append(tail[:0], window[max(len(window)-keep, 0):]...)
		}
		if err != nil {
			return
		}
	}
}

func (p *faultProxy) toClient(c *proxiedConn) {
	defer p.wg.Done()
	defer c.client.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			c.mu.Lock()
			drop, notify := c.dropNext, c.notifyReply
			c.notifyReply = nil
			c.mu.Unlock()
			if notify != nil {
				close(notify.replied)
			}
			if drop != nil {
				close(drop.fired)
				_ = c.server.Close()
				return
			}
			if _, err := c.client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
