package kernelpool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// Received is one message from a kernel, tagged with its channel.
type Received struct {
	Channel jupytermsg.Channel
	Msg     *jupytermsg.Message
	// Charge is what Msg takes of the kernels' MessageBudget (nil with
	// none). Whoever takes a Received from Messages owns it: Release it
	// once Msg is no longer held, or hand it on with Msg.
	Charge *Charge
	// DroppedForBudget and DroppedOversize count this kernel's messages
	// dropped since the last iopub message delivered (which carries the
	// counts): iopub messages for a full budget, and messages over the
	// per-message cap. Clients can be told.
	DroppedForBudget, DroppedOversize int
}

// Release gives back r's charge.
func (r Received) Release() { r.Charge.Release() }

// sockets is one connection to a kernel process. zmq sockets are not
// goroutine-safe, so each socket has exactly one owning goroutine:
// requestLoop owns shell, control and stdin; iopubLoop owns the SUB socket;
// heartbeatLoop owns the REQ socket. Other goroutines reach requestLoop
// through an inproc PUSH/PULL pair guarded by a mutex.
//
// Nothing here waits on the kernel without a bound: a kernel that stops
// reading (stopped, hung, hostile) must not hold a goroutine of the gateway,
// least of all one that is shutting the kernel down. Sends never block on
// zmq (DONTWAIT everywhere) and fail with ErrKernelBusy instead.
type sockets struct {
	zctx     *zmq.Context
	conn     jupytermsg.ConnectionInfo
	signer   jupytermsg.Signer
	identity string
	inproc   string
	maxMsg   int64
	rcvHWM   int
	// sendTimeout bounds how long send waits for requestLoop to take a
	// message; requestLoop stalls while the consumer is not reading.
	sendTimeout time.Duration
	outMu       sync.Mutex
	out         chan<- Received
	// consumer is the kernel's Messages channel once setOut hands it over:
	// from then on messages are charged to budget (may be nil), and what
	// is left in it when the kernel has died is released at close.
	consumer chan Received
	budget   *MessageBudget
	// untold counts drops since the last iopub message delivered.
	untoldBudget, untoldOversize atomic.Int64
	// budgetDrops reports iopub messages dropped for the budget: they
	// are the process's doing, not the kernel's, so they never count
	// toward its flood limit.
	budgetDrops dropReports
	// discard, once closed, makes the loops drop what they receive rather
	// than wait for a consumer that is gone (the kernel has died).
	discard <-chan struct{}
	onError func(error)
	// onFlood (may be nil) is told once that the kernel keeps sending
	// messages that are dropped: the kernel is ended.
	onFlood func(error)
	// drops reports the messages dropped on receipt (bad signature,
	// malformed, oversized) through onError, a few at a time.
	drops dropReports
	stop  chan struct{}

	// stdinReady is closed once the stdin socket is connected; stdinFailed
	// is closed, with stdinErr set, if that can no longer happen.
	stdinReady  chan struct{}
	stdinFailed chan struct{}
	stdinErr    error

	// iopubStopper wakes the iopub loop at close; guarded by pushMu.
	iopubStopper *zmq.Socket

	pushMu    sync.Mutex
	push      *zmq.Socket
	closeOnce sync.Once

	// acks holds, per queued message, where requestLoop reports whether the
	// kernel's socket took it. A sender that gives up removes its entry,
	// and requestLoop drops messages without one, so ErrKernelBusy always
	// means the message was not sent.
	ackMu   sync.Mutex
	acks    map[uint64]chan error
	lastSeq uint64

	wg sync.WaitGroup
}

// Queue sizes, in messages. Small on purpose: libzmq counts messages, not
// bytes, and each may be MaxMessageBytes long. What does not fit waits in
// the kernel's own queues, inside its sandbox and its memory limit.
const (
	// sendHWM is what may wait in the gateway for a kernel to read.
	sendHWM = 32
	// handoffHWM is what may wait for requestLoop (inproc, both ends).
	handoffHWM = 64
	// outBuffer is the capacity of a kernel's Messages channel.
	outBuffer = 16
)

const stopFrame = "stop"

// The first and the longest pause before libzmq connects again to a
// kernel's socket (see newSocket).
const (
	reconnectInterval    = 5 * time.Millisecond
	reconnectIntervalMax = 100 * time.Millisecond
)

// socketOptions are set on a socket before it connects.
type socketOptions struct {
	identity       string
	maxMsg         int64
	rcvHWM, sndHWM int
}

func newSocket(zctx *zmq.Context, kind zmq.Type, endpoint string, opt socketOptions, beforeConnect ...func(*zmq.Socket) error) (*zmq.Socket, error) {
	s, err := zctx.NewSocket(kind)
	if err != nil {
		return nil, fmt.Errorf("new zmq socket: %w", err)
	}
	fail := func(what string, err error) (*zmq.Socket, error) {
		s.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// Without linger 0, closing a socket with queued messages to a dead
	// kernel blocks context termination.
	if err := s.SetLinger(0); err != nil {
		return fail("set linger", err)
	}
	// The gateway connects before a new kernel has bound its sockets, and
	// libzmq tries again only after the reconnect interval: at its default
	// (100 ms, fixed) a start waited up to that long for nothing. From 5 ms,
	// doubling up to 100 ms, the connection follows the kernel's bind
	// within a few ms, and a dead kernel is not retried faster than before.
	if err := s.SetReconnectIvl(reconnectInterval); err != nil {
		return fail("set reconnect interval", err)
	}
	if err := s.SetReconnectIvlMax(reconnectIntervalMax); err != nil {
		return fail("set reconnect interval max", err)
	}
	// A kernel is untrusted: a message over the cap makes libzmq drop the
	// connection (it reconnects) instead of buffering it in the gateway.
	if opt.maxMsg > 0 {
		if err := s.SetMaxmsgsize(opt.maxMsg); err != nil {
			return fail("set max message size", err)
		}
	}
	if opt.rcvHWM > 0 {
		if err := s.SetRcvhwm(opt.rcvHWM); err != nil {
			return fail("set receive high-water mark", err)
		}
	}
	if opt.sndHWM > 0 {
		if err := s.SetSndhwm(opt.sndHWM); err != nil {
			return fail("set send high-water mark", err)
		}
	}
	if opt.identity != "" {
		if err := s.SetIdentity(opt.identity); err != nil {
			return fail("set identity", err)
		}
	}
	if kind == zmq.SUB {
		if err := s.SetSubscribe(""); err != nil {
			return fail("subscribe", err)
		}
	}
	for _, f := range beforeConnect {
		if err := f(s); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.Connect(endpoint); err != nil {
		return fail("connect "+endpoint, err)
	}
	return s, nil
}

// open connects all channels and starts their owning goroutines.
func (s *sockets) open() error {
	s.stop = make(chan struct{})
	s.acks = map[uint64]chan error{}
	pull, err := s.zctx.NewSocket(zmq.PULL)
	if err != nil {
		return fmt.Errorf("inproc pull: %w", err)
	}
	if err := pull.SetRcvhwm(handoffHWM); err != nil {
		pull.Close()
		return fmt.Errorf("inproc pull: %w", err)
	}
	if err := pull.Bind(s.inproc); err != nil {
		pull.Close()
		return fmt.Errorf("bind %s: %w", s.inproc, err)
	}
	push, err := newSocket(s.zctx, zmq.PUSH, s.inproc, socketOptions{sndHWM: handoffHWM})
	if err != nil {
		pull.Close()
		return err
	}
	s.push = push

	var opened []*zmq.Socket
	var monitor *zmq.Socket
	fail := func(err error) error {
		for _, o := range opened {
			o.Close()
		}
		if monitor != nil {
			monitor.Close()
		}
		pull.Close()
		push.Close()
		return err
	}
	dealers := map[jupytermsg.Channel]*zmq.Socket{}
	for _, ch := range []jupytermsg.Channel{jupytermsg.Shell, jupytermsg.Control, jupytermsg.Stdin} {
		// stdin must share the shell socket's identity: the kernel routes
		// input_request to the identity that sent the execute_request.
		var hooks []func(*zmq.Socket) error
		if ch == jupytermsg.Stdin {
			// The monitor's reader must be connected before the socket
			// connects, or the handshake event can be lost.
			hooks = append(hooks, func(d *zmq.Socket) error {
				addr := s.inproc + "-stdin-monitor"
				if err := d.Monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED); err != nil {
					return fmt.Errorf("stdin monitor: %w", err)
				}
				var err error
				if monitor, err = s.zctx.NewSocket(zmq.PAIR); err != nil {
					return fmt.Errorf("stdin monitor: %w", err)
				}
				if err := monitor.Connect(addr); err != nil {
					monitor.Close()
					monitor = nil
					return fmt.Errorf("stdin monitor: %w", err)
				}
				return nil
			})
		}
		d, err := newSocket(s.zctx, zmq.DEALER, s.conn.Endpoint(ch),
			socketOptions{identity: s.identity, maxMsg: s.maxMsg, rcvHWM: s.rcvHWM, sndHWM: sendHWM}, hooks...)
		if err != nil {
			return fail(err)
		}
		opened = append(opened, d)
		dealers[ch] = d
	}
	sub, err := newSocket(s.zctx, zmq.SUB, s.conn.Endpoint(jupytermsg.IOPub), socketOptions{maxMsg: s.maxMsg, rcvHWM: s.rcvHWM})
	if err != nil {
		return fail(err)
	}
	opened = append(opened, sub)
	subStop, err := s.zctx.NewSocket(zmq.PULL)
	if err == nil {
		err = subStop.Bind(s.inproc + "-iopub")
	}
	if err != nil {
		return fail(fmt.Errorf("inproc iopub stop: %w", err))
	}
	opened = append(opened, subStop)
	// Made now, not at close: a context out of sockets must not leave the
	// iopub loop without a way to stop.
	iopubStopper, err := newSocket(s.zctx, zmq.PUSH, s.inproc+"-iopub", socketOptions{})
	if err != nil {
		return fail(fmt.Errorf("inproc iopub stopper: %w", err))
	}
	s.iopubStopper = iopubStopper

	s.stdinReady = make(chan struct{})
	s.stdinFailed = make(chan struct{})
	s.wg.Add(3)
	go s.requestLoop(pull, dealers)
	go s.iopubLoop(sub, subStop)
	go s.watchStdinHandshake(monitor)
	return nil
}

// watchStdinHandshake closes stdinReady once the stdin socket has
// completed its handshake. The kernel drops input_request to a peer it
// does not know yet, so a kernel is not ready before this. If the monitor
// fails, the handshake can never be seen: it closes stdinFailed, so that
// start-up fails at once rather than at StartTimeout.
func (s *sockets) watchStdinHandshake(monitor *zmq.Socket) {
	defer s.wg.Done()
	defer monitor.Close()
	fail := func(err error) {
		s.stdinErr = fmt.Errorf("stdin handshake monitor: %w", err)
		close(s.stdinFailed)
	}
	poller := zmq.NewPoller()
	poller.Add(monitor, zmq.POLLIN)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		polled, err := poller.Poll(100 * time.Millisecond)
		if err != nil {
			fail(err)
			return
		}
		if len(polled) == 0 {
			continue
		}
		event, _, _, err := monitor.RecvEvent(0)
		if err != nil {
			fail(err)
			return
		}
		if event == zmq.EVENT_HANDSHAKE_SUCCEEDED {
			close(s.stdinReady)
			return
		}
	}
}

// startHeartbeat begins pinging. It starts once the kernel is ready: a
// kernel still importing its libraries may not answer yet.
func (s *sockets) startHeartbeat(hb heartbeatConfig) {
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if s.push == nil {
		return
	}
	s.wg.Add(1)
	go s.heartbeatLoop(hb)
}

// setOut hands delivery to the kernel's consumer (until then it goes to
// the start-up handshake, so the two never compete for messages). From
// then on messages are charged to the budget: what start-up reads is the
// kernel's own handshake and warm-up, before any user code runs.
func (s *sockets) setOut(out chan Received) {
	s.outMu.Lock()
	s.out, s.consumer = out, out
	s.outMu.Unlock()
}

// send hands m to requestLoop, which owns the target socket, and waits at
// most sendTimeout for the kernel's socket to take it. ErrKernelBusy means
// it was not sent: the kernel is not reading (its queue is full), or
// requestLoop is stalled behind a consumer that does not read Messages.
func (s *sockets) send(ch jupytermsg.Channel, m *jupytermsg.Message) error {
	ack := make(chan error, 1)
	s.ackMu.Lock()
	s.lastSeq++
	seq := s.lastSeq
	s.acks[seq] = ack
	s.ackMu.Unlock()
	if err := s.queue(ch, seq, s.signer.Encode(nil, m)); err != nil {
		s.claim(seq)
		return err
	}
	t := time.NewTimer(s.sendTimeout)
	defer t.Stop()
	gone := false
	select {
	case err := <-ack:
		return err
	case <-t.C:
	case <-s.stop:
		gone = true
	}
	if _, unclaimed := s.claim(seq); unclaimed {
		if gone {
			return ErrKernelGone
		}
		return fmt.Errorf("%w: %s message not taken within %v", ErrKernelBusy, ch, s.sendTimeout)
	}
	// requestLoop took it just now and reports without blocking.
	return <-ack
}

// sendNoWait queues m without waiting for the outcome: for shutdown, which
// goes on to signals whatever becomes of the message.
func (s *sockets) sendNoWait(ch jupytermsg.Channel, m *jupytermsg.Message) error {
	return s.queue(ch, 0, s.signer.Encode(nil, m))
}

// queue hands frames to requestLoop without blocking. seq 0 means nobody
// waits for the outcome.
func (s *sockets) queue(ch jupytermsg.Channel, seq uint64, frames [][]byte) error {
	var seqFrame [8]byte
	binary.BigEndian.PutUint64(seqFrame[:], seq)
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if s.push == nil {
		return ErrKernelGone
	}
	if _, err := s.push.SendMessageDontwait(string(ch), seqFrame[:], frames); err != nil {
		if isEAGAIN(err) {
			return fmt.Errorf("%w: %d messages already wait for the kernel's sockets", ErrKernelBusy, handoffHWM)
		}
		return fmt.Errorf("queue %s message: %w", ch, err)
	}
	return nil
}

// claim removes seq's ack channel. Exactly one of requestLoop and the
// sender gets it, so a message is either sent and reported or dropped.
func (s *sockets) claim(seq uint64) (chan error, bool) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	ack, ok := s.acks[seq]
	delete(s.acks, seq)
	return ack, ok
}

func isEAGAIN(err error) bool {
	return zmq.AsErrno(err) == zmq.Errno(syscall.EAGAIN)
}

// close stops the loops and closes every socket. It is idempotent and
// safe to call from several goroutines. The stop frames are sent without
// waiting: if the hand-off queue is full, requestLoop has messages to wake
// it and sees stop closed.
func (s *sockets) close() {
	s.closeOnce.Do(func() {
		s.pushMu.Lock()
		close(s.stop)
		_, _ = s.push.SendMessageDontwait(stopFrame)
		_, _ = s.iopubStopper.SendMessageDontwait(stopFrame)
		s.pushMu.Unlock()
		s.wg.Wait()
		s.drops.close(s.onError)
		s.budgetDrops.close(s.onError)
		s.releaseLeftovers()
		s.pushMu.Lock()
		s.iopubStopper.Close()
		s.push.Close()
		s.push = nil
		s.pushMu.Unlock()
	})
}

// releaseLeftovers gives back the charges of messages still in the
// consumer's channel once the kernel has died: nobody will read them. The
// loops have stopped, so nothing more arrives; a consumer still reading
// takes (and releases) some, which is fine: each is taken once.
func (s *sockets) releaseLeftovers() {
	select {
	case <-s.discard:
	default:
		return // a restart: the consumer goes on reading the channel
	}
	s.outMu.Lock()
	consumer := s.consumer
	s.outMu.Unlock()
	if consumer == nil {
		return
	}
	for {
		select {
		case r := <-consumer:
			r.Release()
		default:
			return
		}
	}
}

func (s *sockets) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *sockets) requestLoop(pull *zmq.Socket, dealers map[jupytermsg.Channel]*zmq.Socket) {
	defer s.wg.Done()
	defer pull.Close()
	poller := zmq.NewPoller()
	poller.Add(pull, zmq.POLLIN)
	for _, d := range dealers {
		defer d.Close()
		poller.Add(d, zmq.POLLIN)
	}
	for !s.stopped() {
		polled, err := poller.Poll(-1)
		if err != nil {
			s.onError(fmt.Errorf("poll kernel sockets: %w", err))
			return
		}
		for _, p := range polled {
			if p.Socket == pull {
				frames, err := pull.RecvMessageBytes(0)
				if err != nil {
					s.onError(fmt.Errorf("receive: %w", err))
					return
				}
				if len(frames) == 1 && string(frames[0]) == stopFrame {
					return
				}
				s.forward(dealers, frames)
				continue
			}
			ch := channelOf(p.Socket, dealers)
			frames, size, err := receiveBounded(p.Socket, s.maxMsg)
			if err != nil && !errors.Is(err, errMessageTooLarge) {
				s.onError(fmt.Errorf("receive %s: %w", ch, err))
				return
			}
			if !s.decodeAndDeliver(ch, frames, size, err) {
				return
			}
		}
	}
}

// forward sends one queued message (channel, sequence number, frames) to
// the kernel without waiting, and reports to its sender.
func (s *sockets) forward(dealers map[jupytermsg.Channel]*zmq.Socket, frames [][]byte) {
	if len(frames) < 2 || len(frames[1]) != 8 {
		return
	}
	ch := jupytermsg.Channel(frames[0])
	var ack chan error
	if seq := binary.BigEndian.Uint64(frames[1]); seq != 0 {
		var waiting bool
		if ack, waiting = s.claim(seq); !waiting {
			return // its sender was told ErrKernelBusy
		}
	}
	var err error
	if d, ok := dealers[ch]; !ok {
		err = fmt.Errorf("cannot send on channel %q", ch)
	} else if _, err = d.SendMessageDontwait(frames[2:]); err != nil {
		if isEAGAIN(err) {
			err = fmt.Errorf("%w: the kernel is not reading its %s channel", ErrKernelBusy, ch)
		} else {
			err = fmt.Errorf("send on %s: %w", ch, err)
		}
	}
	if ack != nil {
		ack <- err
	} else if err != nil {
		s.onError(err)
	}
}

func channelOf(sock *zmq.Socket, dealers map[jupytermsg.Channel]*zmq.Socket) jupytermsg.Channel {
	for ch, d := range dealers {
		if d == sock {
			return ch
		}
	}
	return ""
}

// errMessageTooLarge is receiveBounded's error for a message whose frames
// together exceed the cap.
var errMessageTooLarge = errors.New("message over the per-message cap")

// receiveBounded receives one multipart message, keeping none of it once
// its frames together exceed limit (0: no limit): libzmq's own cap
// (ZMQ_MAXMSGSIZE) applies to each frame alone, and a kernel may send many
// frames (buffers). size is the bytes received, kept or not.
func receiveBounded(sock *zmq.Socket, limit int64) (frames [][]byte, size int64, err error) {
	for {
		frame, err := sock.RecvBytes(0)
		if err != nil {
			return nil, size, err
		}
		size += int64(len(frame))
		if limit <= 0 || size <= limit {
			frames = append(frames, frame)
		} else {
			frames = nil
		}
		more, err := sock.GetRcvmore()
		if err != nil {
			return nil, size, err
		}
		if !more {
			break
		}
	}
	if limit > 0 && size > limit {
		return nil, size, fmt.Errorf("%w: %d bytes, the cap is %d", errMessageTooLarge, size, limit)
	}
	return frames, size, nil
}

// decodeAndDeliver drops messages that fail verification or are over the
// cap (received is receiveBounded's error): they are never delivered. Once
// the consumer has the kernel, each message is charged to the budget
// first: an iopub message that does not fit is dropped, a reply waits for
// room. It waits for the consumer, which is what stops the loops from
// reading more (and lets libzmq's small receive queues fill, so the
// kernel's side queues or, for iopub, drops). It reports false once the
// sockets are closing.
func (s *sockets) decodeAndDeliver(ch jupytermsg.Channel, frames [][]byte, size int64, received error) bool {
	if received != nil {
		s.budget.countRefusal()
		s.untoldOversize.Add(1)
		s.drops.add(fmt.Errorf("%s message dropped: %w", ch, received), s.onError, s.onFlood)
		return true
	}
	_, m, err := s.signer.Decode(frames)
	if err != nil {
		s.drops.add(fmt.Errorf("%s message dropped: %w", ch, err), s.onError, s.onFlood)
		return true
	}
	s.outMu.Lock()
	out, charging := s.out, s.consumer != nil && s.budget != nil
	s.outMu.Unlock()
	r := Received{Channel: ch, Msg: m}
	if charging {
		if ch == jupytermsg.IOPub {
			c, ok := s.budget.TryCharge(size)
			if !ok {
				s.budget.countDrop()
				s.untoldBudget.Add(1)
				s.budgetDrops.add(fmt.Errorf("iopub %s message of %d bytes dropped: the kernel message budget (%d bytes) is full", m.Header.MsgType, size, s.budget.Limit()), s.onError, nil)
				return true
			}
			r.Charge = c
		} else {
			c, err := s.budget.Wait(size, s.stop, s.discard)
			switch {
			case err != nil:
				s.budget.countRefusal()
				s.drops.add(fmt.Errorf("%s message dropped: %w", ch, err), s.onError, s.onFlood)
				return true
			case c == nil:
				return !s.stopped()
			}
			r.Charge = c
		}
	}
	if ch == jupytermsg.IOPub {
		r.DroppedForBudget = int(s.untoldBudget.Swap(0))
		r.DroppedOversize = int(s.untoldOversize.Swap(0))
	}
	select {
	case out <- r:
		return true
	case <-s.discard:
		r.Release()
		return true
	case <-s.stop:
		r.Release()
		return false
	}
}

func (s *sockets) iopubLoop(sub, stop *zmq.Socket) {
	defer s.wg.Done()
	defer sub.Close()
	defer stop.Close()
	poller := zmq.NewPoller()
	poller.Add(sub, zmq.POLLIN)
	poller.Add(stop, zmq.POLLIN)
	for {
		polled, err := poller.Poll(-1)
		if err != nil {
			s.onError(fmt.Errorf("poll iopub: %w", err))
			return
		}
		for _, p := range polled {
			if p.Socket == stop {
				return
			}
			frames, size, err := receiveBounded(sub, s.maxMsg)
			if err != nil && !errors.Is(err, errMessageTooLarge) {
				s.onError(fmt.Errorf("receive iopub: %w", err))
				return
			}
			if !s.decodeAndDeliver(jupytermsg.IOPub, frames, size, err) {
				return
			}
		}
	}
}

type heartbeatConfig struct {
	interval time.Duration
	timeout  time.Duration
	misses   int
	onDead   func(error)
}

// heartbeatLoop pings the kernel. A REQ socket that missed its reply is
// stuck in the wrong state, so it is closed and recreated.
func (s *sockets) heartbeatLoop(hb heartbeatConfig) {
	defer s.wg.Done()
	var req *zmq.Socket
	defer func() {
		if req != nil {
			req.Close()
		}
	}()
	missed := 0
	ticker := time.NewTicker(hb.interval)
	defer ticker.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-ticker.C:
		}
		if req == nil {
			var err error
			if req, err = newSocket(s.zctx, zmq.REQ, s.conn.Endpoint(jupytermsg.Heartbeat), socketOptions{maxMsg: 64}); err != nil {
				hb.onDead(fmt.Errorf("heartbeat socket: %w", err))
				return
			}
		}
		if s.ping(req, hb.timeout) {
			missed = 0
			continue
		}
		req.Close()
		req = nil
		missed++
		if missed >= hb.misses {
			hb.onDead(fmt.Errorf("%w: no heartbeat for %d intervals", ErrKernelDied, missed))
			return
		}
	}
}

func (s *sockets) ping(req *zmq.Socket, timeout time.Duration) bool {
	if _, err := req.SendBytes([]byte("ping"), zmq.DONTWAIT); err != nil {
		return false
	}
	poller := zmq.NewPoller()
	poller.Add(req, zmq.POLLIN)
	polled, err := poller.Poll(timeout)
	if err != nil || len(polled) == 0 {
		return false
	}
	_, err = req.RecvMessageBytes(0)
	return err == nil
}

// A kernel can send messages the gateway drops (badly signed, malformed,
// oversized) as fast as it likes; one such kernel once wrote 50,000 log
// lines in 5 s. Of each dropInterval, the first dropBurst drops are
// reported one by one and the rest counted, their number reported once at
// the interval's end (or when the sockets close): at most dropBurst+1
// reports per interval per kernel.
const (
	dropBurst    = 5
	dropInterval = 10 * time.Second
	// dropFlood drops within one interval mark a kernel that keeps sending
	// what the gateway drops: it is ended (onFlood), as no honest kernel
	// sends even one.
	dropFlood = 1000
)

// ErrKernelFlooded ends a kernel that sent dropFlood messages the gateway
// dropped within one dropInterval.
var ErrKernelFlooded = errors.New("kernel kept sending messages that failed verification")

// dropReports rate-limits the reports of dropped messages. The zero value
// uses dropBurst and dropInterval; both loops that receive report to it.
type dropReports struct {
	burst    int
	interval time.Duration

	mu       sync.Mutex
	began    time.Time // the start of the current interval
	reported int       // drops reported one by one in it
	inWindow int       // drops in it, for the flood limit
	flooded  bool      // the flood was reported (once)
	counted  int       // drops counted since the last summary
	last     error     // the last of them
	timer    *time.Timer
	closed   bool
}

// droppedError is the summary of the drops counted in an interval.
type droppedError struct {
	n, burst int
	interval time.Duration
	last     error
}

func (e *droppedError) Error() string {
	return fmt.Sprintf("%d more messages dropped within %v (only the first %d of an interval are reported one by one); the last: %v", e.n, e.interval, e.burst, e.last)
}

func (e *droppedError) Unwrap() error { return e.last }

func (d *dropReports) limits() (int, time.Duration) {
	burst, interval := d.burst, d.interval
	if burst <= 0 {
		burst = dropBurst
	}
	if interval <= 0 {
		interval = dropInterval
	}
	return burst, interval
}

// add reports err now, or counts it for the interval's summary; the
// dropFlood-th drop of an interval is also told to onFlood (if set), once.
func (d *dropReports) add(err error, report func(error), onFlood func(error)) {
	d.mu.Lock()
	burst, interval := d.limits()
	now := time.Now()
	if now.Sub(d.began) >= interval {
		d.began, d.reported, d.inWindow = now, 0, 0
	}
	d.inWindow++
	if d.inWindow >= dropFlood && !d.flooded && onFlood != nil {
		d.flooded = true
		d.mu.Unlock()
		onFlood(fmt.Errorf("%w: %d dropped within %v, the last: %v", ErrKernelFlooded, d.inWindow, interval, err))
		d.mu.Lock()
	}
	if d.reported < burst {
		d.reported++
		d.mu.Unlock()
		report(err)
		return
	}
	d.counted++
	d.last = err
	if d.timer == nil && !d.closed {
		d.timer = time.AfterFunc(d.began.Add(interval).Sub(now), func() { d.summarize(report, false) })
	}
	d.mu.Unlock()
}

// summarize reports what was counted since the last summary. The timer's
// call stands down once the reports are closed: close reports the rest.
func (d *dropReports) summarize(report func(error), closing bool) {
	d.mu.Lock()
	if d.closed && !closing {
		d.mu.Unlock()
		return
	}
	burst, interval := d.limits()
	n, last := d.counted, d.last
	d.counted, d.last, d.timer = 0, nil, nil
	d.mu.Unlock()
	if n > 0 {
		report(&droppedError{n: n, burst: burst, interval: interval, last: last})
	}
}

// close stops the timer and reports what is still counted.
func (d *dropReports) close(report func(error)) {
	d.mu.Lock()
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
	d.mu.Unlock()
	d.summarize(report, true)
}
