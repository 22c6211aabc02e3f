package kernelpool

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/jupytermsg"
)

func TestMessageBudgetChargesUpToItsLimit(t *testing.T) {
	b := NewMessageBudget(100)
	first, ok := b.TryCharge(60)
	if !ok {
		t.Fatal("60 of 100 refused")
	}
	if _, ok := b.TryCharge(41); ok {
		t.Fatal("60+41 of 100 charged")
	}
	second, ok := b.TryCharge(40)
	if !ok {
		t.Fatal("60+40 of 100 refused")
	}
	if st := b.Stats(); st.InUse != 100 || st.Peak != 100 {
		t.Fatalf("in use %d, peak %d; want 100, 100", st.InUse, st.Peak)
	}
	first.Release()
	if _, ok := b.TryCharge(61); ok {
		t.Fatal("40+61 of 100 charged")
	}
	third, ok := b.TryCharge(60)
	if !ok {
		t.Fatal("40+60 of 100 refused after a release")
	}
	second.Release()
	third.Release()
	if st := b.Stats(); st.InUse != 0 || st.Peak != 100 || st.DoubleReleases != 0 {
		t.Fatalf("after releasing all: %+v", st)
	}
}

func TestMessageBudgetReleaseTwiceGivesNothingBack(t *testing.T) {
	b := NewMessageBudget(100)
	c, _ := b.TryCharge(70)
	other, _ := b.TryCharge(30)
	c.Release()
	c.Release()
	st := b.Stats()
	if st.InUse != 30 || st.DoubleReleases != 1 {
		t.Fatalf("a charge released twice: in use %d (want 30: the other's), double releases %d (want 1)", st.InUse, st.DoubleReleases)
	}
	other.Release()
	var none *Charge
	none.Release() // no budget: nothing to give back
}

func TestMessageBudgetWithoutLimitCounts(t *testing.T) {
	b := NewMessageBudget(0)
	var held []*Charge
	for range 10 {
		c, ok := b.TryCharge(1 << 30)
		if !ok {
			t.Fatal("a budget without limit refused")
		}
		held = append(held, c)
	}
	if st := b.Stats(); st.InUse != 10<<30 {
		t.Fatalf("in use %d, want %d", st.InUse, 10<<30)
	}
	for _, c := range held {
		c.Release()
	}
	if st := b.Stats(); st.InUse != 0 || st.Peak != 10<<30 {
		t.Fatalf("after release: %+v", st)
	}
}

// heldMessages is a Reclaimer holding charges oldest first, as a replay
// does.
type heldMessages struct {
	mu      sync.Mutex
	charges []*Charge
	asked   int
}

func (h *heldMessages) Reclaimable() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n int64
	for _, c := range h.charges {
		n += c.Bytes()
	}
	return n
}

func (h *heldMessages) Reclaim(need int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.asked++
	for len(h.charges) > 0 && need > 0 {
		need -= h.charges[0].Bytes()
		h.charges[0].Release()
		h.charges = h.charges[1:]
	}
}

func (h *heldMessages) hold(t *testing.T, b *MessageBudget, n int64) {
	t.Helper()
	c, ok := b.TryCharge(n)
	if !ok {
		t.Fatalf("%d bytes refused", n)
	}
	h.mu.Lock()
	h.charges = append(h.charges, c)
	h.mu.Unlock()
}

// A full budget takes room from the reclaimer holding the most, and only
// as much as it needs.
func TestMessageBudgetReclaimsFromTheLargestHolderFirst(t *testing.T) {
	b := NewMessageBudget(100)
	small, large := &heldMessages{}, &heldMessages{}
	defer b.AddReclaimer(small)()
	removeLarge := b.AddReclaimer(large)
	small.hold(t, b, 20)
	for range 4 {
		large.hold(t, b, 20)
	}
	c, ok := b.TryCharge(30)
	if !ok {
		t.Fatal("30 bytes refused with 80 reclaimable")
	}
	if small.asked != 0 || large.asked != 1 || large.Reclaimable() != 40 || small.Reclaimable() != 20 {
		t.Fatalf("reclaimed: small asked %d (holds %d), large asked %d (holds %d); want only the large one, down to 40",
			small.asked, small.Reclaimable(), large.asked, large.Reclaimable())
	}
	if st := b.Stats(); st.InUse != 90 || st.Reclaims != 1 {
		t.Fatalf("after reclaiming: %+v", st)
	}
	c.Release()
	// A reclaimer taken off is not asked.
	removeLarge()
	if _, ok := b.TryCharge(61); ok {
		t.Fatal("charged 61 of 100 with 60 held and only 20 of them reclaimable")
	}
	if large.asked != 1 || small.asked != 1 {
		t.Fatalf("asked: the removed reclaimer %d times (want 1, from before), the other %d (want 1)", large.asked, small.asked)
	}
}

// Wait blocks while the budget is full and charges once room is made; a
// stop ends the wait with nothing charged.
func TestMessageBudgetWaitsForRoom(t *testing.T) {
	b := NewMessageBudget(100)
	held, _ := b.TryCharge(80)
	got := make(chan *Charge, 1)
	go func() {
		c, err := b.Wait(50)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	waitUntil(t, "the wait to begin", func() bool { return b.Stats().Waited == 1 })
	select {
	case <-got:
		t.Fatal("charged 50 while 80 of 100 were held")
	default:
	}
	held.Release()
	c := <-got
	if c.Bytes() != 50 || b.Stats().InUse != 50 {
		t.Fatalf("charged %d, in use %d; want 50, 50", c.Bytes(), b.Stats().InUse)
	}

	stop := make(chan struct{})
	stopped := make(chan error, 1)
	go func() {
		c, err := b.Wait(60, stop)
		if c != nil {
			err = errors.New("charged after a stop")
		}
		stopped <- err
	}()
	waitUntil(t, "the second wait to begin", func() bool { return b.Stats().Waited == 2 })
	close(stop)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	c.Release()
	if _, err := b.Wait(101); !errors.Is(err, ErrOverBudget) {
		t.Fatalf("waiting for more than the whole budget: %v, want ErrOverBudget", err)
	}
	if st := b.Stats(); st.InUse != 0 {
		t.Fatalf("in use %d after all released", st.InUse)
	}
}

func TestMessageBudgetUnderConcurrentUse(t *testing.T) {
	b := NewMessageBudget(1000)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				n := int64(1 + (g*31+i)%200)
				if i%3 == 0 {
					c, err := b.Wait(n)
					if err != nil {
						t.Error(err)
						return
					}
					c.Release()
				} else if c, ok := b.TryCharge(n); ok {
					c.Release()
				}
			}
		}()
	}
	wg.Wait()
	if st := b.Stats(); st.InUse != 0 || st.Peak > 1000 || st.DoubleReleases != 0 {
		t.Fatalf("after concurrent use: %+v", st)
	}
}

func TestMessageBudgetMetrics(t *testing.T) {
	b := NewMessageBudget(1 << 20)
	c, _ := b.TryCharge(1000)
	defer c.Release()
	b.countDrop()
	b.countRefusal()
	reg := prometheus.NewRegistry()
	reg.MustRegister(b)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "/" + l.GetValue()
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for series, want := range map[string]float64{
		"cellgate_kernel_message_bytes/in_use": 1000, "cellgate_kernel_message_bytes/peak": 1000, "cellgate_kernel_message_bytes/limit": 1 << 20,
		"cellgate_kernel_messages_refused_total/dropped": 1, "cellgate_kernel_messages_refused_total/oversized": 1,
		"cellgate_kernel_messages_refused_total/waited": 0, "cellgate_kernel_message_reclaims_total": 0,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}
}

// waitUntil polls cond with a generous deadline (not a timed assertion:
// only a hang fails it).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(hangGuard); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// publishSized publishes a display_data of about size bytes of content,
// its data split into buffers frames (0: none), and returns its msg_id.
func (f *fakeKernel) publishSized(size, buffers int) string {
	f.t.Helper()
	m, err := jupytermsg.New("display_data", "fake", nil, map[string]any{
		"data": map[string]string{"text/plain": strings.Repeat("x", size/(buffers+1))}, "metadata": map[string]any{},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	for range buffers {
		m.Buffers = append(m.Buffers, make([]byte, size/(buffers+1)))
	}
	frames := jupytermsg.NewSigner(f.conn.Key).Encode([][]byte{[]byte("kernel.fake.display_data")}, m)
	if _, err := f.pub.SendMessage(frames); err != nil {
		f.t.Fatal(err)
	}
	return m.Header.MsgID
}

// A consumer that does not read cannot make the sockets hold more than
// the budget: iopub messages beyond it are dropped, counted and reported
// once, and the next message delivered carries the count. Messages over the
// cap in all their frames together (each under libzmq's per-frame cap) are
// refused and counted. What the consumer never read is released when the
// kernel dies.
func TestSocketsKeepToTheMessageBudget(t *testing.T) {
	const (
		limit   = 3 << 20
		msgSize = 500 << 10
		sent    = 40
	)
	zctx := testContext(t)
	fake := newFakeKernel(t, zctx)
	got := &reports{}
	budget := NewMessageBudget(limit)
	dead := make(chan struct{})
	s, _ := connectToFake(t, zctx, fake, time.Hour, got, func(s *sockets) {
		s.budget, s.discard, s.budgetDrops = budget, dead, dropReports{burst: 1, interval: time.Hour}
	})
	consumer := make(chan Received, outBuffer)
	s.setOut(consumer)

	for range sent {
		fake.publishSized(msgSize, 0)
	}
	waitUntil(t, "every message charged or dropped", func() bool { return len(consumer)+int(budget.Stats().Dropped) == sent })
	st := budget.Stats()
	if st.Peak > limit || st.InUse > limit || st.Dropped == 0 {
		t.Fatalf("%d messages of %d KiB to a consumer that does not read: %+v; want at most %d bytes held and some dropped", sent, msgSize>>10, st, limit)
	}
	charged := len(consumer)
	if want := limit / (msgSize + 1024); charged < want-1 || charged > want {
		t.Errorf("%d messages charged, want about %d (the budget's worth)", charged, want)
	}

	// Over the cap only as a whole: three frames of 0.4 MiB against 1 MiB.
	fake.publishSized(1600<<10, 3)
	waitUntil(t, "the oversized message refused", func() bool { return budget.Stats().Refused == 1 })

	// Make room: the next message through carries what was dropped.
	for range charged {
		(<-consumer).Release()
	}
	id := fake.publishSized(100, 0)
	r := <-consumer
	if r.Msg.Header.MsgID != id || r.DroppedForBudget != int(st.Dropped) || r.DroppedOversize != 1 {
		t.Fatalf("the next message: %s carrying %d dropped for the budget and %d oversized; want %s, %d and 1",
			r.Msg.Header.MsgID, r.DroppedForBudget, r.DroppedOversize, id, st.Dropped)
	}
	r.Release()

	// The kernel dies with messages its consumer never read.
	for range 3 {
		fake.publishSized(msgSize, 0)
	}
	waitUntil(t, "three more delivered", func() bool { return len(consumer) == 3 })
	close(dead)
	s.close()
	if st := budget.Stats(); st.InUse != 0 || st.DoubleReleases != 0 {
		t.Fatalf("after the kernel died: %+v; want nothing in use", st)
	}
	budgetReports := 0
	for _, err := range got.errs {
		if strings.Contains(err.Error(), "kernel message budget") {
			budgetReports++
		}
	}
	// One report, and the summary of the rest at close.
	if budgetReports != 2 {
		t.Errorf("%d reports of budget drops, want 2 (the first, then one summary): %v", budgetReports, got.errs)
	}
}

// A real kernel whose consumer stops reading fills the budget with what
// waits in its Messages channel: its iopub output beyond the budget is
// dropped, not held, the next iopub message delivered carries the count,
// the reply is not lost, and what was never read is released when the
// kernel is shut down.
func TestKernelKeepsToTheMessageBudget(t *testing.T) {
	const limit = 4 << 20
	budget := NewMessageBudget(limit)
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) {
		c.MaxMessageBytes, c.MessageBudget = 2<<20, budget
	})
	req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{
		Code: "for i in range(20):\n    display({'text/plain': str(i) + 'x' * 1500000}, raw=True)", UserExpressions: map[string]string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, req); err != nil {
		t.Fatal(err)
	}
	// Nobody reads until the kernel has sent everything it will.
	waitUntil(t, "output dropped for the budget", func() bool { return budget.Stats().Dropped > 0 })
	if st := budget.Stats(); st.Peak > limit {
		t.Fatalf("peak %d charged, over the budget %d", st.Peak, limit)
	}
	dropped, replied := 0, false
	for !replied || dropped == 0 {
		var r Received
		select {
		case r = <-k.Messages():
		case <-time.After(hangGuard):
			t.Fatalf("no reply (%v) or no drop count (%d) after %+v", replied, dropped, budget.Stats())
		}
		dropped += r.DroppedForBudget
		if r.Msg.Header.MsgType == "execute_reply" && r.Msg.ParentMsgID() == req.Header.MsgID {
			replied = true
		}
		r.Release()
	}
	if st := budget.Stats(); dropped != int(st.Dropped) || st.Peak > limit {
		t.Errorf("delivered messages carried %d drops; the budget counted %+v", dropped, st)
	}

	// Output left unread when the kernel goes is given back.
	again, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{
		Code: "display({'text/plain': 'x' * 1500000}, raw=True)", UserExpressions: map[string]string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, again); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second output charged", func() bool { return budget.Stats().InUse > 1<<20 })
	k.Shutdown()
	if st := budget.Stats(); st.InUse != 0 || st.DoubleReleases != 0 {
		t.Fatalf("after shutdown: %+v, want nothing in use", st)
	}
}

// With the budget full, a kernel's reply is not dropped: it waits until
// there is room, while its iopub output is dropped.
func TestKernelRepliesWaitForTheBudget(t *testing.T) {
	const limit = 1 << 20
	budget := NewMessageBudget(limit)
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) {
		c.MaxMessageBytes, c.MessageBudget = limit, budget
	})
	hog, ok := budget.TryCharge(limit)
	if !ok {
		t.Fatal("could not fill the budget")
	}
	req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: "print('hello')", UserExpressions: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, req); err != nil {
		t.Fatal(err)
	}
	// The budget stays full until the hog goes: the busy status and the
	// stream are dropped, the reply waits.
	waitUntil(t, "the reply to wait for room and iopub output dropped", func() bool {
		st := budget.Stats()
		return st.Waited == 1 && st.Dropped >= 2
	})
	hog.Release()
	for timeout := time.After(hangGuard); ; {
		select {
		case r := <-k.Messages():
			r.Release()
			if r.Msg.Header.MsgType == "execute_reply" && r.Msg.ParentMsgID() == req.Header.MsgID {
				if st := budget.Stats(); st.Peak > limit || st.DoubleReleases != 0 {
					t.Fatalf("%+v", st)
				}
				return
			}
		case <-timeout:
			t.Fatalf("the reply never came once there was room: %+v", budget.Stats())
		}
	}
}

// Hold never waits: what does not fit after reclaiming is refused and
// counted as skipped; a nil budget holds without charging.
func TestMessageBudgetHoldRefusesWhatDoesNotFit(t *testing.T) {
	b := NewMessageBudget(100)
	held, ok := b.Hold(80)
	if !ok {
		t.Fatal("80 of 100 refused")
	}
	if _, ok := b.Hold(21); ok {
		t.Fatal("80+21 of 100 held")
	}
	if st := b.Stats(); st.Skipped != 1 || st.InUse != 80 {
		t.Fatalf("after a refused hold: %+v; want 1 skipped, 80 in use", st)
	}
	held.Release()
	if st := b.Stats(); st.InUse != 0 || st.DoubleReleases != 0 {
		t.Fatalf("after the release: %+v", st)
	}
	var none *MessageBudget
	if c, ok := none.Hold(1 << 40); !ok || c != nil {
		t.Fatalf("no budget: Hold gave %v, %v; want nil, true", c, ok)
	}
	var k *Kernel
	if k.MessageBudget() != nil {
		t.Fatal("no kernel, a budget")
	}
}

// A shared charge goes back when its last holder releases it, once; a
// charge already released cannot be shared.
func TestMessageBudgetSharedChargeGoesBackWithItsLastHolder(t *testing.T) {
	b := NewMessageBudget(100)
	c, _ := b.TryCharge(60)
	if !c.Share() {
		t.Fatal("a live charge refused a second holder")
	}
	c.Release()
	if st := b.Stats(); st.InUse != 60 {
		t.Fatalf("one of two holders released: in use %d, want 60", st.InUse)
	}
	c.Release()
	if st := b.Stats(); st.InUse != 0 || st.DoubleReleases != 0 {
		t.Fatalf("both released: %+v", st)
	}
	if c.Share() {
		t.Fatal("a released charge took a holder")
	}
	c.Release()
	if st := b.Stats(); st.InUse != 0 || st.DoubleReleases != 1 {
		t.Fatalf("a release too many: %+v; want nothing given back and 1 double release", st)
	}
	var none *Charge
	if none.Share() {
		t.Fatal("no charge, shared")
	}
}
