package cluster

import (
	"fmt"
	"testing"
	"time"
)

func TestOwnerCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newOwnerCache(3, 10*time.Second, time.Second)
	owned := ownerEntry{known: true, owner: "a", epoch: "e"}

	c.put("s1", owned, now)
	c.put("unknown", ownerEntry{}, now)
	if e, ok := c.get("s1", now.Add(9*time.Second)); !ok || e != owned {
		t.Fatalf("get(s1) within its TTL = %+v, %v", e, ok)
	}
	if _, ok := c.get("unknown", now.Add(999*time.Millisecond)); !ok {
		t.Fatal("negative entry gone within its TTL")
	}
	if _, ok := c.get("unknown", now.Add(time.Second)); ok {
		t.Fatal("negative entry kept past its TTL")
	}
	if _, ok := c.get("s1", now.Add(10*time.Second)); ok {
		t.Fatal("entry kept past its TTL")
	}
	if c.len() != 0 {
		t.Fatalf("expired entries left: %d", c.len())
	}

	// Bounded, least recently used out first.
	for i := range 3 {
		c.put(fmt.Sprint("s", i), owned, now)
	}
	c.get("s0", now) // s1 is now the least recently used
	c.put("s3", owned, now)
	if _, ok := c.get("s1", now); ok || c.len() != 3 {
		t.Fatalf("s1 not evicted (len %d)", c.len())
	}
	for _, id := range []string{"s0", "s2", "s3"} {
		if _, ok := c.get(id, now); !ok {
			t.Errorf("%s evicted", id)
		}
	}
	// Replacing refreshes the TTL and the kind.
	c.put("s0", ownerEntry{}, now.Add(5*time.Second))
	if e, ok := c.get("s0", now.Add(5500*time.Millisecond)); !ok || e.known {
		t.Errorf("replaced entry = %+v, %v", e, ok)
	}
	c.forget("s2")
	if _, ok := c.get("s2", now); ok {
		t.Error("forgotten entry still there")
	}
	c.clear()
	if c.len() != 0 {
		t.Error("clear left entries")
	}
}

// TestOwnerCacheBoundedUnderRandomIDs: lookups of random ids cannot grow the cache.
func TestOwnerCacheBoundedUnderRandomIDs(t *testing.T) {
	c := newOwnerCache(100, time.Minute, time.Minute)
	now := time.Now()
	for i := range 10000 {
		c.put(fmt.Sprint("random-", i), ownerEntry{}, now)
	}
	if c.len() != 100 || len(c.byID) != 100 {
		t.Fatalf("len = %d/%d, want 100", c.len(), len(c.byID))
	}
}
