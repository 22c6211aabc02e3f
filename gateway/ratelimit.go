package gateway

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxRateKeys bounds the addresses a rateLimiter remembers: past it, the
// ones whose bucket has refilled are forgotten (they lose nothing).
const maxRateKeys = 10000

// rateLimiter is a token bucket per client address.
type rateLimiter struct {
	every time.Duration
	burst int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

// newRateLimiter allows perMinute events a minute per address, in bursts
// of up to perMinute; zero or less allows everything.
func newRateLimiter(perMinute int) *rateLimiter {
	if perMinute <= 0 {
		return nil
	}
	return &rateLimiter{every: time.Minute / time.Duration(perMinute), burst: perMinute, buckets: map[string]*rate.Limiter{}}
}

// allow takes a token of addr's bucket, or says how long until one is
// there.
func (r *rateLimiter) allow(addr string, now time.Time) (bool, time.Duration) {
	if r == nil {
		return true, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[addr]
	if b == nil {
		if len(r.buckets) >= maxRateKeys {
			r.forgetFullLocked(now)
		}
		b = rate.NewLimiter(rate.Every(r.every), r.burst)
		r.buckets[addr] = b
	}
	res := b.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (r *rateLimiter) forgetFullLocked(now time.Time) {
	for addr, b := range r.buckets {
		if b.TokensAt(now) >= float64(r.burst) {
			delete(r.buckets, addr)
		}
	}
}
