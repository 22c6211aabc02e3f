package cluster

import (
	"container/list"
	"sync"
	"time"
)

// ownerEntry is what a lookup found of a session: its owner (an incarnation of an instance), or
// how it ended, or nothing (known is false).
type ownerEntry struct {
	known bool
	owner string
	epoch string
	ended *EndedError
}

// ownerCache remembers lookups of session owners for a short while, so that a client's stream of
// requests (long-polls land on every instance in turn) does not cost a query each. A session's
// owner never changes while it lives, so a found owner may be kept for long; whether that owner
// is alive is asked of the registry's view of instances on every use, not cached here. An
// unknown id is kept briefly only: nothing should make it known later (an id is claimed before
// any client learns it), but a short TTL bounds the damage of a caller that breaks that rule.
// It is bounded (least recently used out first), so random ids cannot grow it.
type ownerCache struct {
	max              int
	ttl, negativeTTL time.Duration

	mu    sync.Mutex
	byID  map[string]*list.Element
	order *list.List // of *cached, most recently used first
}

type cached struct {
	id      string
	entry   ownerEntry
	expires time.Time
}

func newOwnerCache(max int, ttl, negativeTTL time.Duration) *ownerCache {
	return &ownerCache{max: max, ttl: ttl, negativeTTL: negativeTTL, byID: map[string]*list.Element{}, order: list.New()}
}

// get returns the entry for id unless it is missing or has expired at now.
func (c *ownerCache) get(id string, now time.Time) (ownerEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byID[id]
	if !ok {
		return ownerEntry{}, false
	}
	e := el.Value.(*cached)
	if !now.Before(e.expires) {
		c.removeLocked(el)
		return ownerEntry{}, false
	}
	c.order.MoveToFront(el)
	return e.entry, true
}

// put remembers entry for id from now on, for the TTL its kind has.
func (c *ownerCache) put(id string, entry ownerEntry, now time.Time) {
	ttl := c.ttl
	if !entry.known {
		ttl = c.negativeTTL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		e := el.Value.(*cached)
		e.entry, e.expires = entry, now.Add(ttl)
		c.order.MoveToFront(el)
		return
	}
	c.byID[id] = c.order.PushFront(&cached{id: id, entry: entry, expires: now.Add(ttl)})
	for c.order.Len() > c.max {
		c.removeLocked(c.order.Back())
	}
}

// forget drops what is remembered of id.
func (c *ownerCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.removeLocked(el)
	}
}

func (c *ownerCache) removeLocked(el *list.Element) {
	delete(c.byID, el.Value.(*cached).id)
	c.order.Remove(el)
}

func (c *ownerCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// clear forgets everything: after this instance was declared dead, what it knew of owners may
// predate sweeps it did not see.
func (c *ownerCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.byID)
	c.order.Init()
}
