package gateway

import (
	"sync"

	"github.com/cellgate/cellgate/gateway/session"
)

// cellSessions counts the live kernels of each Sage-cell "cell session"
// (the CellSessionID the Sage cell's front end sends, one per page), and
// refuses more than max at once, as the Sage cell does. Requests without
// one are not counted here (the per-address and per-client caps still
// apply).
type cellSessions struct {
	max int

	mu   sync.Mutex
	live map[string]int // only ids with live kernels: bounded by the sessions
}

func newCellSessions(max int) *cellSessions {
	return &cellSessions{max: max, live: map[string]int{}}
}

// reserve takes a slot for id; release gives it back (call it once).
// ok is false when id holds max kernels already.
func (c *cellSessions) reserve(id string) (release func(), ok bool) {
	if id == "" {
		return func() {}, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live[id] >= c.max {
		return nil, false
	}
	c.live[id]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.live[id]--; c.live[id] <= 0 {
				delete(c.live, id)
			}
		})
	}, true
}

// releaseWhenEnded gives a started session's slot back when it ends.
func (c *cellSessions) releaseWhenEnded(sess *session.Session, release func()) {
	go func() {
		<-sess.Ended()
		release()
	}()
}

// count is how many kernels id holds.
func (c *cellSessions) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live[id]
}
