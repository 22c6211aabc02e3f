package kernelpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// TestSlowConsumerHoldsLittle: a kernel that publishes far more than its
// reader takes must not make the gateway hold it. Once the kernel has
// published everything it is stopped, so whatever can still be read was
// held by the gateway.
func TestSlowConsumerHoldsLittle(t *testing.T) {
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) { c.HeartbeatInterval = time.Hour })
	const published = 400
	code := "from IPython.display import display\nimport sys\n" +
		"for i in range(" + strconv.Itoa(published) + "):\n    display({'text/plain': 'x' * 65536}, raw=True)\n" +
		// flush returns once the iopub thread has sent everything before it.
		"sys.stdout.flush()\nopen('flooded', 'w').close()\n"
	m, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: code, UserExpressions: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, m); err != nil {
		t.Fatal(err)
	}
	flooded := filepath.Join(k.WorkDir, "flooded")
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(flooded); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel never finished publishing: %s", k.Output())
		}
	}
	if err := syscall.Kill(-k.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	held := 0
	for quiet := time.NewTimer(time.Second); ; {
		select {
		case <-k.Messages():
			held++
			quiet.Reset(time.Second)
			continue
		case <-quiet.C:
		}
		break
	}
	// The default queues (16 in Messages, 8 per socket) and a few messages
	// in socket buffers and in hand; a literal, so that raising the queues
	// fails here.
	const bound = 64
	if held > bound {
		t.Errorf("the gateway held %d of %d messages a stopped kernel published; want at most %d", held, published, bound)
	}
}

// TestStdinMonitorFailureFailsFast: if the stdin handshake can no longer
// be seen, start-up must hear of it at once, not at StartTimeout.
func TestStdinMonitorFailureFailsFast(t *testing.T) {
	zctx := testContext(t)
	monitor, err := zctx.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	monitor.Close()
	s := &sockets{stop: make(chan struct{}), stdinReady: make(chan struct{}), stdinFailed: make(chan struct{})}
	s.wg.Add(1)
	go s.watchStdinHandshake(monitor)
	waitFor(t, s.stdinFailed, "the stdin watcher to report its failure")
	if s.stdinErr == nil {
		t.Error("stdinFailed closed without an error")
	}
	s.wg.Wait()
}

// fakeKernel is a real ZMQ peer standing in for a kernel's iopub socket:
// it publishes whatever it is given, signed with the key it is given.
type fakeKernel struct {
	t    *testing.T
	pub  *zmq.Socket
	conn jupytermsg.ConnectionInfo
}

func newFakeKernel(t *testing.T, zctx *zmq.Context) *fakeKernel {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "cgfk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn := jupytermsg.ConnectionInfo{Transport: "ipc", IP: filepath.Join(dir, "k"), ShellPort: 1, IOPubPort: 2, StdinPort: 3, ControlPort: 4, HBPort: 5,
		SignatureScheme: "hmac-sha256", Key: "the-kernels-key"}
	pub, err := zctx.NewSocket(zmq.PUB)
	if err != nil {
		t.Fatal(err)
	}
	// No high-water mark: every message published reaches the gateway,
	// so the test can count them.
	if err := pub.SetSndhwm(0); err != nil {
		t.Fatal(err)
	}
	_ = pub.SetLinger(0)
	if err := pub.Bind(conn.Endpoint(jupytermsg.IOPub)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return &fakeKernel{t: t, pub: pub, conn: conn}
}

// publish sends one status message signed with key and returns its msg_id.
func (f *fakeKernel) publish(key string) string {
	f.t.Helper()
	m, err := jupytermsg.New("status", "fake", nil, map[string]string{"execution_state": "idle"})
	if err != nil {
		f.t.Fatal(err)
	}
	frames := jupytermsg.NewSigner(key).Encode([][]byte{[]byte("kernel.fake.status")}, m)
	if _, err := f.pub.SendMessage(frames); err != nil {
		f.t.Fatal(err)
	}
	return m.Header.MsgID
}

// reports collects what sockets report through onError.
type reports struct {
	mu   sync.Mutex
	errs []error
}

func (r *reports) add(err error) { r.mu.Lock(); r.errs = append(r.errs, err); r.mu.Unlock() }

// count returns the drops reported one by one and the drops summed up in
// summaries, and the number of summaries.
func (r *reports) count(t *testing.T) (single, summed, summaries int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.errs {
		var d *droppedError
		switch {
		case errors.As(err, &d):
			summed += d.n
			summaries++
		case errors.Is(err, jupytermsg.ErrBadSignature):
			single++
		default:
			t.Errorf("unexpected report: %v", err)
		}
		if !errors.Is(err, jupytermsg.ErrBadSignature) || !strings.Contains(err.Error(), "iopub message dropped") {
			t.Errorf("report %q does not say what was dropped and why", err)
		}
	}
	return single, summed, summaries
}

// connectToFake opens the gateway's sockets on fake's endpoints and waits
// until a message the fake publishes arrives (the SUB socket joins late).
func connectToFake(t *testing.T, zctx *zmq.Context, fake *fakeKernel, interval time.Duration, got *reports, tweaks ...func(*sockets)) (*sockets, <-chan Received) {
	t.Helper()
	out := make(chan Received, 64)
	s := &sockets{
		zctx: zctx, conn: fake.conn, signer: jupytermsg.NewSigner(fake.conn.Key), identity: "gateway",
		inproc: "inproc://drops-" + strconv.FormatInt(time.Now().UnixNano(), 36), maxMsg: 1 << 20, rcvHWM: 8, sendTimeout: time.Second,
		out: out, onError: got.add, drops: dropReports{interval: interval},
	}
	for _, tweak := range tweaks {
		tweak(s)
	}
	if err := s.open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	for deadline := time.Now().Add(hangGuard); ; {
		id := fake.publish(fake.conn.Key)
		select {
		case r := <-out:
			if r.Msg.Header.MsgID == id {
				return s, out
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway's SUB socket never joined")
		}
	}
}

// waitForMessage reads out until the message id arrives.
func waitForMessage(t *testing.T, out <-chan Received, id string) {
	t.Helper()
	for timeout := time.After(hangGuard); ; {
		select {
		case r := <-out:
			if r.Msg.Header.MsgID == id {
				return
			}
		case <-timeout:
			t.Fatalf("message %s never arrived", id)
		}
	}
}

// A kernel that floods the gateway with badly signed messages gets a few
// reported (so the log says what happened), the rest counted in one line
// per interval, and its good messages still through. Each used to be a
// warning line of its own.
func TestBadSignaturesReportedAFewAtATime(t *testing.T) {
	const flood = 2000
	zctx := testContext(t)
	fake := newFakeKernel(t, zctx)
	got := &reports{}
	// An interval longer than the test: one summary, at close.
	s, out := connectToFake(t, zctx, fake, time.Hour, got)
	for range flood {
		fake.publish("not-the-key")
	}
	// Messages from one publisher arrive in order: once this one is
	// through, every bad one before it has been dropped.
	waitForMessage(t, out, fake.publish(fake.conn.Key))
	s.close()
	single, summed, summaries := got.count(t)
	if single != dropBurst || summaries != 1 || summed != flood-dropBurst {
		t.Errorf("%d bad messages: %d reported one by one and %d in %d summaries; want %d, then %d in 1",
			flood, single, summed, summaries, dropBurst, flood-dropBurst)
	}
}

// The count of an interval is reported when the interval ends, not only
// when the kernel goes; every drop is in some report.
func TestDropSummaryEachInterval(t *testing.T) {
	const flood = 500
	zctx := testContext(t)
	fake := newFakeKernel(t, zctx)
	got := &reports{}
	s, out := connectToFake(t, zctx, fake, 100*time.Millisecond, got)
	for range flood {
		fake.publish("not-the-key")
	}
	waitForMessage(t, out, fake.publish(fake.conn.Key))
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(20 * time.Millisecond) {
		if _, _, summaries := got.count(t); summaries > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no summary while the sockets are open")
		}
	}
	s.close()
	if single, summed, _ := got.count(t); single+summed != flood {
		t.Errorf("%d bad messages: %d reported one by one, %d in summaries; want all %d", flood, single, summed, flood)
	}
}

// A real kernel that keeps sending badly signed messages is ended, with a
// reason that says so, instead of costing the gateway for ever.
func TestFloodingKernelIsEnded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real kernel")
	}
	k := startKernel(t, installedSpecs(t)["python3"], nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	flood := fmt.Sprintf("k = get_ipython().kernel\nfor i in range(%d):\n    k.iopub_socket.send_multipart([b'flood', b'<IDS|MSG>', b'0' * 64, b'{}', b'{}', b'{}', b'{}'])\nimport time; time.sleep(30)", 3*dropFlood)
	go func() { _, _ = Execute(ctx, k, flood, func(Received) {}) }()
	select {
	case <-k.Done():
	case <-ctx.Done():
		t.Fatal("a kernel flooding the gateway with badly signed messages was not ended")
	}
	if err := k.Err(); !errors.Is(err, ErrKernelFlooded) {
		t.Fatalf("kernel ended with %v, want ErrKernelFlooded", err)
	}
}
