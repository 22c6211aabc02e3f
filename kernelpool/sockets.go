package kernelpool

import (
	"fmt"
	"sync"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// Received is one message from a kernel, tagged with its channel.
type Received struct {
	Channel jupytermsg.Channel
	Msg     *jupytermsg.Message
}

// sockets is one connection to a kernel process. zmq sockets are not
// goroutine-safe, so each socket has exactly one owning goroutine:
// requestLoop owns shell, control and stdin; iopubLoop owns the SUB socket;
// heartbeatLoop owns the REQ socket. Other goroutines reach requestLoop
// through an inproc PUSH/PULL pair guarded by a mutex.
type sockets struct {
	zctx     *zmq.Context
	conn     jupytermsg.ConnectionInfo
	signer   jupytermsg.Signer
	identity string
	inproc   string
	maxMsg   int64
	outMu    sync.Mutex
	out      chan<- Received
	onError  func(error)
	stop     chan struct{}

	// stdinReady is closed once the stdin socket is connected.
	stdinReady chan struct{}

	// iopubStopper wakes the iopub loop at close; guarded by pushMu.
	iopubStopper *zmq.Socket

	pushMu    sync.Mutex
	push      *zmq.Socket
	closeOnce sync.Once

	wg sync.WaitGroup
}

const stopFrame = "stop"

func newSocket(zctx *zmq.Context, kind zmq.Type, endpoint, identity string, maxMsg int64, beforeConnect ...func(*zmq.Socket) error) (*zmq.Socket, error) {
	s, err := zctx.NewSocket(kind)
	if err != nil {
		return nil, fmt.Errorf("new zmq socket: %w", err)
	}
	// Without linger 0, closing a socket with queued messages to a dead
	// kernel blocks context termination.
	if err := s.SetLinger(0); err != nil {
		s.Close()
		return nil, fmt.Errorf("set linger: %w", err)
	}
	// A kernel is untrusted: a message over the cap makes libzmq drop the
	// connection (it reconnects) instead of buffering it in the gateway.
	if maxMsg > 0 {
		if err := s.SetMaxmsgsize(maxMsg); err != nil {
			s.Close()
			return nil, fmt.Errorf("set max message size: %w", err)
		}
	}
	if identity != "" {
		if err := s.SetIdentity(identity); err != nil {
			s.Close()
			return nil, fmt.Errorf("set identity: %w", err)
		}
	}
	if kind == zmq.SUB {
		if err := s.SetSubscribe(""); err != nil {
			s.Close()
			return nil, fmt.Errorf("subscribe: %w", err)
		}
	}
	for _, f := range beforeConnect {
		if err := f(s); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.Connect(endpoint); err != nil {
		s.Close()
		return nil, fmt.Errorf("connect %s: %w", endpoint, err)
	}
	return s, nil
}

// open connects all channels and starts their owning goroutines.
func (s *sockets) open() error {
	s.stop = make(chan struct{})
	pull, err := s.zctx.NewSocket(zmq.PULL)
	if err != nil {
		return fmt.Errorf("inproc pull: %w", err)
	}
	if err := pull.Bind(s.inproc); err != nil {
		pull.Close()
		return fmt.Errorf("bind %s: %w", s.inproc, err)
	}
	push, err := newSocket(s.zctx, zmq.PUSH, s.inproc, "", 0)
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
		d, err := newSocket(s.zctx, zmq.DEALER, s.conn.Endpoint(ch), s.identity, s.maxMsg, hooks...)
		if err != nil {
			return fail(err)
		}
		opened = append(opened, d)
		dealers[ch] = d
	}
	sub, err := newSocket(s.zctx, zmq.SUB, s.conn.Endpoint(jupytermsg.IOPub), "", s.maxMsg)
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
	iopubStopper, err := newSocket(s.zctx, zmq.PUSH, s.inproc+"-iopub", "", 0)
	if err != nil {
		return fail(fmt.Errorf("inproc iopub stopper: %w", err))
	}
	s.iopubStopper = iopubStopper

	s.stdinReady = make(chan struct{})
	s.wg.Add(3)
	go s.requestLoop(pull, dealers)
	go s.iopubLoop(sub, subStop)
	go s.watchStdinHandshake(monitor)
	return nil
}

// watchStdinHandshake closes stdinReady once the stdin socket has
// completed its handshake. The kernel drops input_request to a peer it
// does not know yet, so a kernel is not ready before this.
func (s *sockets) watchStdinHandshake(monitor *zmq.Socket) {
	defer s.wg.Done()
	defer monitor.Close()
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
			return
		}
		if len(polled) == 0 {
			continue
		}
		event, _, _, err := monitor.RecvEvent(0)
		if err == nil && event == zmq.EVENT_HANDSHAKE_SUCCEEDED {
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

// setOut redirects delivery, so a start-up handshake never competes with
// the kernel's consumer for messages.
func (s *sockets) setOut(out chan<- Received) {
	s.outMu.Lock()
	s.out = out
	s.outMu.Unlock()
}

// send hands frames to requestLoop, which owns the target socket.
func (s *sockets) send(ch jupytermsg.Channel, m *jupytermsg.Message) error {
	frames := s.signer.Encode(nil, m)
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if s.push == nil {
		return ErrKernelGone
	}
	if _, err := s.push.SendMessage(string(ch), frames); err != nil {
		return fmt.Errorf("queue %s message: %w", ch, err)
	}
	return nil
}

// close stops the loops and closes every socket. It is idempotent and
// safe to call from several goroutines.
func (s *sockets) close() {
	s.closeOnce.Do(func() {
		s.pushMu.Lock()
		close(s.stop)
		_, _ = s.push.SendMessage(stopFrame)
		_, _ = s.iopubStopper.SendMessage(stopFrame)
		s.pushMu.Unlock()
		s.wg.Wait()
		s.pushMu.Lock()
		s.iopubStopper.Close()
		s.push.Close()
		s.push = nil
		s.pushMu.Unlock()
	})
}

func (s *sockets) requestLoop(pull *zmq.Socket, dealers map[jupytermsg.Channel]*zmq.Socket) {
	defer s.wg.Done()
	defer pull.Close()
	poller := zmq.NewPoller()
	poller.Add(pull, zmq.POLLIN)
	byIndex := []jupytermsg.Channel{""}
	for ch, d := range dealers {
		defer d.Close()
		poller.Add(d, zmq.POLLIN)
		byIndex = append(byIndex, ch)
	}
	for {
		polled, err := poller.Poll(-1)
		if err != nil {
			s.onError(fmt.Errorf("poll kernel sockets: %w", err))
			return
		}
		for _, p := range polled {
			frames, err := p.Socket.RecvMessageBytes(0)
			if err != nil {
				s.onError(fmt.Errorf("receive: %w", err))
				return
			}
			if p.Socket == pull {
				if string(frames[0]) == stopFrame {
					return
				}
				ch := jupytermsg.Channel(frames[0])
				if _, err := dealers[ch].SendMessage(frames[1:]); err != nil {
					s.onError(fmt.Errorf("send on %s: %w", ch, err))
				}
				continue
			}
			ch := channelOf(p.Socket, dealers)
			if !s.decodeAndDeliver(ch, frames) {
				return
			}
		}
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

// decodeAndDeliver drops messages that fail verification: they are never
// delivered. It reports false once the consumer has gone away.
func (s *sockets) decodeAndDeliver(ch jupytermsg.Channel, frames [][]byte) bool {
	_, m, err := s.signer.Decode(frames)
	if err != nil {
		s.onError(fmt.Errorf("%s message dropped: %w", ch, err))
		return true
	}
	s.outMu.Lock()
	out := s.out
	s.outMu.Unlock()
	select {
	case out <- Received{Channel: ch, Msg: m}:
		return true
	case <-s.stop:
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
			frames, err := sub.RecvMessageBytes(0)
			if err != nil {
				s.onError(fmt.Errorf("receive iopub: %w", err))
				return
			}
			if !s.decodeAndDeliver(jupytermsg.IOPub, frames) {
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
			if req, err = newSocket(s.zctx, zmq.REQ, s.conn.Endpoint(jupytermsg.Heartbeat), "", 64); err != nil {
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
