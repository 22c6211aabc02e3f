package session

import (
	"sync"
	"time"
)

// presence keeps clients that reach the session by separate requests
// (long-polling) counted as attached between requests, so a one-shot
// session does not end while its client is between polls.
type presence struct {
	mu      sync.Mutex
	clients map[string]*presentClient
	stopped bool
}

// presentClient is one such client. Its timer is never Reset from outside
// expire: a timer that has fired may have its func waiting for the lock,
// so a request only moves the deadline, and expire re-arms from it.
type presentClient struct {
	deadline time.Time
	timer    *time.Timer
	detach   func(clean bool)
}

// pollingGauge is the clients gauge label of clients kept by presence.
const pollingGauge = "polling"

func (p *presence) mark(sess *Session, client string, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	if p.clients == nil {
		p.clients = map[string]*presentClient{}
	}
	deadline := time.Now().Add(grace)
	if e, ok := p.clients[client]; ok {
		if deadline.After(e.deadline) {
			e.deadline = deadline
		}
		return
	}
	if len(p.clients) >= maxRememberedClients {
		return
	}
	e := &presentClient{deadline: deadline, detach: sess.Attach(TransportPoll)}
	sess.metrics.Clients.WithLabelValues(pollingGauge).Inc()
	p.clients[client] = e
	// expire takes p.mu, held here until e.timer is set.
	e.timer = time.AfterFunc(grace, func() { p.expire(sess, client, e) })
}

func (p *presence) expire(sess *Session, client string, e *presentClient) {
	p.mu.Lock()
	if p.clients[client] != e {
		p.mu.Unlock()
		return
	}
	if left := time.Until(e.deadline); left > 0 {
		e.timer.Reset(left)
		p.mu.Unlock()
		return
	}
	delete(p.clients, client)
	p.mu.Unlock()
	sess.metrics.Clients.WithLabelValues(pollingGauge).Dec()
	// The deadline was this client's grace already.
	e.detach(true)
}

// stop detaches every client; the session has ended.
func (p *presence) stop(sess *Session) {
	p.mu.Lock()
	all := p.clients
	p.clients, p.stopped = nil, true
	p.mu.Unlock()
	for _, e := range all {
		e.timer.Stop()
		sess.metrics.Clients.WithLabelValues(pollingGauge).Dec()
		e.detach(true)
	}
}
