package kernelpool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// names pops every waiter, in the order the queue serves them.
func served(q *fairQueue) []string {
	var out []string
	for w := q.pop(); w != nil; w = q.pop() {
		out = append(out, fmt.Sprintf("%s%d", w.client, w.since.Unix()))
	}
	return out
}

func push(q *fairQueue, client string, n int64) *waiter {
	w := &waiter{client: client, since: time.Unix(n, 0)}
	q.push(w)
	return w
}

func TestFairQueueTakesTurnsAcrossClients(t *testing.T) {
	cases := []struct {
		name   string
		arrive []string // client of each waiter, in arrival order
		want   []string
	}{
		{"one client is first come first served", []string{"a", "a", "a"}, []string{"a0", "a1", "a2"}},
		{"a single waiter is not starved by a crowd", []string{"a", "a", "a", "a", "b"}, []string{"a0", "b4", "a1", "a2", "a3"}},
		{"turns in order of first arrival", []string{"a", "b", "a", "c", "b", "a"}, []string{"a0", "b1", "c3", "a2", "b4", "a5"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var q fairQueue
			for i, client := range c.arrive {
				push(&q, client, int64(i))
			}
			if q.len() != len(c.arrive) {
				t.Fatalf("len = %d", q.len())
			}
			if got := served(&q); !slices.Equal(got, c.want) {
				t.Errorf("served %v, want %v", got, c.want)
			}
			if q.len() != 0 || len(q.turns) != 0 || len(q.byClient) != 0 {
				t.Errorf("queue not empty after serving all: %+v", q)
			}
		})
	}
}

func TestFairQueueRemove(t *testing.T) {
	var q fairQueue
	a0 := push(&q, "a", 0)
	push(&q, "b", 1)
	b2 := push(&q, "b", 2)
	push(&q, "c", 3)
	if !q.remove(a0) || q.remove(a0) {
		t.Fatal("remove: a waiter is removed once")
	}
	q.remove(b2)
	if got, want := served(&q), []string{"b1", "c3"}; !slices.Equal(got, want) {
		t.Errorf("served %v, want %v", got, want)
	}
	if !q.oldest().IsZero() || q.drain() != nil {
		t.Error("an empty queue has no oldest waiter and nothing to drain")
	}
}

// TestPlaceForMatchesService: the place a new waiter is told is where
// the queue then serves it, for random queues.
func TestPlaceForMatchesService(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	clients := []string{"a", "b", "c", "d"}
	for round := range 500 {
		var q fairQueue
		n := r.IntN(12)
		for i := range n {
			push(&q, clients[r.IntN(len(clients))], int64(i))
		}
		// Serve a few, so turns are rotated.
		for range r.IntN(3) {
			q.pop()
		}
		client := clients[r.IntN(len(clients))]
		place := q.placeFor(client)
		me := push(&q, client, 99)
		for i := 1; ; i++ {
			w := q.pop()
			if w == nil {
				t.Fatalf("round %d: new waiter never served", round)
			}
			if w == me {
				if i != place {
					t.Fatalf("round %d: placeFor said %d, served %d", round, place, i)
				}
				break
			}
		}
	}
}

func TestStartModelWait(t *testing.T) {
	s := time.Second
	cases := []struct {
		name  string
		m     startModel
		place int
		want  time.Duration
	}{
		{"next kernel is the start in flight", startModel{slots: 2, took: 4 * s, mine: []time.Duration{3 * s, 1 * s}}, 1, 1 * s},
		{"second in flight", startModel{slots: 2, took: 4 * s, mine: []time.Duration{3 * s, 1 * s}}, 2, 3 * s},
		{"after the starts in flight, the first slot free starts again", startModel{slots: 2, took: 4 * s, mine: []time.Duration{3 * s, 1 * s}}, 3, 5 * s},
		{"idle slots start at once", startModel{slots: 2, took: 4 * s}, 2, 4 * s},
		{"two slots make two kernels per start time", startModel{slots: 2, took: 4 * s}, 5, 12 * s},
		{"one slot", startModel{slots: 1, took: 2 * s}, 3, 6 * s},
		{"other kernelspecs hold slots", startModel{slots: 1, took: 2 * s, others: []time.Duration{5 * s}}, 1, 7 * s},
		{"nothing to wait for", startModel{slots: 1, took: 2 * s}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.m.wait(c.place); got != c.want {
				t.Errorf("wait(%d) = %v, want %v", c.place, got, c.want)
			}
		})
	}
}

func TestDemand(t *testing.T) {
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, time.Unix(0, 0).Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	cases := []struct {
		name      string
		arrivals  []time.Time
		perKernel time.Duration
		want      int
	}{
		{"none", nil, time.Second, 0},
		{"one", at(0), time.Second, 1},
		{"a burst needs all at once", at(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), time.Second, 10},
		{"leases slower than starts need one", at(0, 2000, 4000, 6000), time.Second, 1},
		{"a page of cells faster than starts", at(0, 100, 200, 300, 400), 500 * time.Millisecond, 5},
		{"starts catch up between cells", at(0, 600, 1200), 500 * time.Millisecond, 1},
		{"the largest backlog counts", at(0, 1, 2, 10000, 10001), time.Second, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := demand(c.arrivals, c.perKernel); got != c.want {
				t.Errorf("demand = %d, want %d", got, c.want)
			}
		})
	}
}

// TestArrivalsAreBounded hits maxArrivals: a flood of leases keeps at
// most that many arrivals, the latest.
func TestArrivalsAreBounded(t *testing.T) {
	sp := &specPool{}
	base := time.Unix(0, 0)
	for i := range maxArrivals + 100 {
		sp.arrive(base.Add(time.Duration(i)))
	}
	if len(sp.arrivals) != maxArrivals {
		t.Fatalf("%d arrivals kept, cap %d", len(sp.arrivals), maxArrivals)
	}
	if last := sp.arrivals[len(sp.arrivals)-1]; !last.Equal(base.Add(maxArrivals + 99)) {
		t.Errorf("latest arrival lost: %v", last)
	}
	if d := demand(sp.arrivals, time.Hour); d != maxArrivals {
		t.Errorf("demand of a flood = %d, want the cap %d", d, maxArrivals)
	}
}

func TestWaitErrorWrapsBoth(t *testing.T) {
	err := error(&WaitError{Kernel: "python3", Place: 3, Wait: 12 * time.Second, Within: 10 * time.Second, Live: 4, MaxKernels: 16})
	if !errors.Is(err, ErrNoKernel) || !errors.Is(err, ErrWaitTooLong) {
		t.Errorf("%v wraps neither", err)
	}
	if _, err := ParseQueueMode("lifo"); err == nil {
		t.Error("unknown queue mode accepted")
	}
}

func TestStartTimeIsTheMedianOfTheLatest(t *testing.T) {
	sp := &specPool{}
	if sp.startTime() != 0 {
		t.Error("a start time before any start")
	}
	for _, d := range []time.Duration{9, 1, 2, 3, 100} {
		sp.took = keepLatest(sp.took, d*time.Second, recentStarts)
	}
	if got := sp.startTime(); got != 3*time.Second {
		t.Errorf("median of 9,1,2,3,100 s = %v", got)
	}
	for range recentStarts {
		sp.took = keepLatest(sp.took, time.Second, recentStarts)
	}
	if len(sp.took) != recentStarts || sp.startTime() != time.Second {
		t.Errorf("latest %d starts: %v", recentStarts, sp.took)
	}
	sp.took = keepLatest(sp.took, 300*time.Millisecond, recentStarts)
	if got := sp.fastestStart(); got != 300*time.Millisecond {
		t.Errorf("fastest of the latest starts = %v", got)
	}
}
