package gateway

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestRateLimiterPerAddress(t *testing.T) {
	r := newRateLimiter(60) // one a second, bursts of 60
	now := time.Now()
	for i := 0; i < 60; i++ {
		if ok, _ := r.allow("a", now); !ok {
			t.Fatalf("request %d of a burst of 60 refused", i)
		}
	}
	ok, wait := r.allow("a", now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("61st: allowed %v, wait %v; want refused for at most a second", ok, wait)
	}
	if ok, _ := r.allow("b", now); !ok {
		t.Fatal("another address was refused")
	}
	if ok, _ := r.allow("a", now.Add(time.Second)); !ok {
		t.Fatal("a second later the bucket had not refilled one")
	}
	if newRateLimiter(0) != nil {
		t.Fatal("a rate of 0 limits")
	}
}

// POST /permalink beyond the rate is a 429 with Retry-After.
func TestPermalinkRateLimit(t *testing.T) {
	env, _ := newStorageEnv(t, func(c *Config) { c.PermalinksPerMinute = 3 })
	for i := 0; i < 3; i++ {
		if r := env.postForm("/permalink", url.Values{"code": {"1"}, "language": {"python3"}}, nil); r.StatusCode != http.StatusOK {
			t.Fatalf("permalink %d: %d", i, r.StatusCode)
		}
	}
	var e apiError
	r := env.postForm("/permalink", url.Values{"code": {"1"}, "language": {"python3"}}, &e)
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || e.Message == "" {
		t.Fatalf("4th permalink in a minute at 3/min: %d, Retry-After %q, %+v", r.StatusCode, r.Header.Get("Retry-After"), e)
	}
}
