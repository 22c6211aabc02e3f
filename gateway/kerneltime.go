package gateway

import (
	"fmt"
	"math"
	"time"
)

// Kernel time: how long sessions live counts against the address that
// started them, so that one address cannot hold the server with long idle
// timeouts, however few kernels it holds at once (MaxKernelsPerAddr caps
// that). Each address has a bucket of kernel-seconds, full at the start
// (KernelTimePerAddr). Every session it holds (and every start in
// progress) draws one kernel-second per second; the bucket refills at
// KernelTimePerAddr per KernelTimeWindow, never beyond full. While the
// bucket is empty, the address's new sessions are refused with 429 and a
// Retry-After; the sessions it holds carry on. The bucket does not go
// below minus one full bucket: whatever an address did, once its sessions
// end it waits at most one window.

// sweepEvery is how many reservations pass between sweeps of the
// addresses whose buckets are full again.
const sweepEvery = 256

// kernelTime is the budget: perAddr kernel time per window.
type kernelTime struct {
	perAddr, window time.Duration
}

// addrTime is one address's bucket, in kernel-seconds, as of at.
type addrTime struct {
	left float64
	at   time.Time
}

// refill is the bucket's refill rate, in kernel-seconds per second.
func (b kernelTime) refill() float64 { return b.perAddr.Seconds() / b.window.Seconds() }

// settle brings a up to now for an address that held held sessions since
// a.at. The level moves one way over the interval, so clamping at its end
// is exact.
func (b kernelTime) settle(a *addrTime, held int, now time.Time) {
	dt := now.Sub(a.at).Seconds()
	if dt <= 0 {
		return
	}
	full := b.perAddr.Seconds()
	a.left = min(full, max(-full, a.left+dt*(b.refill()-float64(held))))
	a.at = now
}

// check refuses a new session to an address whose bucket is empty.
func (b kernelTime) check(a *addrTime, held int, remote string) error {
	if a.left > 0 {
		return nil
	}
	// The bucket fills by refill minus what the address holds; if that is
	// not positive, it fills only once the address ends some sessions.
	rate, ending := b.refill()-float64(held), false
	if rate <= 0 {
		rate, ending = b.refill(), true
	}
	wait := time.Duration(math.Ceil((-a.left+1)/rate)) * time.Second
	return &kernelTimeError{remote: remote, budget: b, held: held, retryAfter: wait, ending: ending}
}

// kernelTimeError is a refusal for kernel time used up: a client cap
// (429) that says when to come back.
type kernelTimeError struct {
	remote     string
	budget     kernelTime
	held       int
	retryAfter time.Duration
	ending     bool // the wait starts once the address's sessions end
}

func (e *kernelTimeError) Error() string {
	when := fmt.Sprintf("retry in %v", e.retryAfter)
	if e.ending {
		when = fmt.Sprintf("end some of the %d kernels it holds, then retry in %v", e.held, e.retryAfter)
	}
	return fmt.Sprintf("%s: address %s has used its kernel time (%v per %v): %s", errClientCap, e.remote, e.budget.perAddr, e.budget.window, when)
}

func (e *kernelTimeError) Unwrap() error { return errClientCap }

// RetryAfter is when to come back (answerError's Retry-After).
func (e *kernelTimeError) RetryAfter() time.Duration { return e.retryAfter }
