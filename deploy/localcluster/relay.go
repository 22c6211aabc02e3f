package localcluster

import (
	"io"
	"net"
	"sync"
)

// Relay passes TCP connections on to a target (an instance's way to the database) until Cut:
// then the connections it carries are closed and new ones are closed as soon as they are
// accepted, so that one instance loses the database while the others keep it, until Restore.
type Relay struct {
	// Addr is where it listens (give it to the instance instead of the target's).
	Addr   string
	target string
	l      net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartRelay listens on a free loopback port and relays to target (host:port).
func StartRelay(target string) (*Relay, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{Addr: l.Addr().String(), target: target, l: l, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.relay(c)
	}
}

// relay joins c to a new connection to the target, both ways, until either ends or Cut.
func (r *Relay) relay(c net.Conn) {
	defer r.wg.Done()
	if !r.track(c) {
		c.Close()
		return
	}
	defer r.untrack(c)
	t, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	if !r.track(t) {
		t.Close()
		return
	}
	defer r.untrack(t)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(t, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, t); done <- struct{}{} }()
	<-done
	// One direction ended: end the other too (closing both, in untrack).
}

// track records c, unless the relay is cut.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cut {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

// Cut closes every connection relayed and refuses new ones (accepted, then closed at once).
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = true
	for c := range r.conns {
		c.Close()
	}
}

// Restore relays new connections again.
func (r *Relay) Restore() {
	r.mu.Lock()
	r.cut = false
	r.mu.Unlock()
}

// Close stops listening, closes every connection and waits for the relaying to end.
func (r *Relay) Close() {
	r.l.Close()
	r.Cut()
	r.wg.Wait()
}
