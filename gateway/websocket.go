package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// codec is one websocket encoding of Jupyter messages.
type codec interface {
	// subprotocols the codec can speak, in order of preference.
	subprotocols() []string
	// forProtocol returns the codec for the negotiated subprotocol.
	forProtocol(p string) codec
	decode(kind int, data []byte) (jupytermsg.Channel, *jupytermsg.Message, error)
	encode(e session.Entry) (kind int, data []byte, err error)
	// problem is how a per-client error is told to this client;
	// kernelSession is the kernel's session id, which Jupyter clients
	// expect.
	problem(text, kernelSession string) (kind int, data []byte)
	// resumeFromStart says whether a client new to the session first gets
	// the session's buffered output.
	resumeFromStart() bool
}

const (
	writeTimeout = 30 * time.Second
	// replaceWait bounds how long a reconnecting client waits for the
	// connection it replaces to save where it got to.
	replaceWait = 5 * time.Second
)

// clientConn is the live websocket of one client. A reconnect with the
// same session_id replaces it, as jupyter_server does: the stale one is
// closed, and the new one resumes where it got to.
type clientConn struct {
	kicked chan struct{}

	mu  sync.Mutex
	net net.Conn
}

// kick closes the connection for its successor, also unblocking a write
// to a client that stopped reading.
func (c *clientConn) kick() {
	close(c.kicked)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.net != nil {
		_ = c.net.SetWriteDeadline(time.Now())
	}
}

func (c *clientConn) setNet(n net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.net = n
	select {
	case <-c.kicked:
		_ = n.SetWriteDeadline(time.Now())
	default:
	}
}

// bridge runs one websocket client of a session until either side ends.
func (s *Server) bridge(c echo.Context, sess *session.Session, cd codec) error {
	if !websocket.IsWebSocketUpgrade(c.Request()) {
		return httpError(c, http.StatusBadRequest, "this is a websocket endpoint: the request must ask to upgrade")
	}
	// The client's session_id names the connection: its replies, its
	// cursor, and the connection a reconnect replaces.
	clientID := c.QueryParam("session_id")
	if clientID == "" {
		clientID = uuid.NewString()
	}
	since, err := askedSince(c, sess.Replay().Last())
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	conn, ok := s.upgrade(c, cd)
	if !ok {
		return nil // upgrade has answered
	}
	defer conn.Close()
	// Only an upgrade that passed its checks (the origin's among them)
	// replaces the live connection of this session_id: a refused one must
	// not disconnect it. The cursor is read after the claim, once the
	// replaced connection has saved where it got to.
	turn := &clientConn{kicked: make(chan struct{})}
	release := sess.Claim(clientID, turn.kick, replaceWait)
	defer release()
	cursor := sess.StartCursor(clientID, cd.resumeFromStart())
	if since != nil {
		cursor = *since
	}
	turn.setNet(conn.NetConn())
	cd = cd.forProtocol(conn.Subprotocol())
	conn.SetReadLimit(s.cfg.MaxMessageBytes)
	detach := sess.Attach(session.TransportWebsocket)
	var closedCleanly atomic.Bool
	defer func() { detach(closedCleanly.Load()) }()
	transport := "websocket_" + string(sess.API())
	s.metrics.session.Clients.WithLabelValues(transport).Inc()
	defer s.metrics.session.Clients.WithLabelValues(transport).Dec()

	ack := &delivery{ponged: make(chan struct{}, 1)}
	ack.acked.Store(cursor)
	problems := make(chan string, 16)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		closedCleanly.Store(s.readClient(conn, sess, clientID, cd, problems, ack))
	}()
	s.writeClient(conn, sess, clientID, cd, cursor, problems, readerDone, turn.kicked, ack)
	// Only what the client has acknowledged counts as delivered: a frame
	// written may still sit in a buffer when the connection drops.
	sess.RememberCursor(clientID, ack.acked.Load())
	_ = conn.Close()
	<-readerDone
	return nil
}

// upgrade takes c's request over as a websocket speaking cd's
// subprotocols, from an allowed origin; false means it was refused and the
// refusal answered, in the JSON error shape like any other (Upgrade writes
// to c.Response()).
func (s *Server) upgrade(c echo.Context, cd codec) (*websocket.Conn, bool) {
	up := websocket.Upgrader{
		CheckOrigin:  s.originAllowed,
		Subprotocols: cd.subprotocols(),
		Error: func(_ http.ResponseWriter, _ *http.Request, status int, reason error) {
			_ = httpError(c, status, reason.Error())
		},
	}
	conn, err := up.Upgrade(c.Response(), c.Request(), nil)
	return conn, err == nil
}

// delivery is what a client has acknowledged: pongs carry the seq of the
// last frame written before their ping.
type delivery struct {
	acked  atomic.Uint64
	ponged chan struct{} // wakes the writer to ping for what came since
}

func (d *delivery) pong(data string) {
	n, err := strconv.ParseUint(data, 10, 64)
	if err != nil {
		return
	}
	for {
		old := d.acked.Load()
		if n <= old || d.acked.CompareAndSwap(old, n) {
			break
		}
	}
	select {
	case d.ponged <- struct{}{}:
	default:
	}
}

// askedSince is the ?since=N a client resumes from, nil if none; last is
// the session's last sequence number.
func askedSince(c echo.Context, last uint64) (*uint64, error) {
	v := c.QueryParam("since")
	if v == "" {
		return nil, nil
	}
	n, err := parseSince(v, last)
	if err != nil {
		return nil, err
	}
	return &n, nil
}

// readClient relays a client's frames until its connection ends, and
// reports whether the client closed it on purpose: it sent a close frame
// (1000, 1001 when a page navigates away, or none, as a browser's close()
// sends), rather than the connection dropping.
func (s *Server) readClient(conn *websocket.Conn, sess *session.Session, clientID string, cd codec, problems chan<- string, ack *delivery) (clean bool) {
	defer func() {
		// A bug triggered by one client's bytes ends that connection only.
		if r := recover(); r != nil {
			s.metrics.session.Errors.WithLabelValues("panic").Inc()
			s.log.Error().Str("session", sess.ID()).Interface("panic", r).Bytes("stack", debug.Stack()).Msg("websocket reader panicked; connection closed")
		}
	}()
	tell := func(text string) {
		s.metrics.session.Errors.WithLabelValues("client_message").Inc()
		select {
		case problems <- text:
		default: // the client is not reading its errors either
		}
	}
	deadline := func() { _ = conn.SetReadDeadline(time.Now().Add(2*s.cfg.PingInterval + writeTimeout)) }
	deadline()
	conn.SetPongHandler(func(data string) error {
		deadline()
		ack.pong(data)
		return nil
	})
	for {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				tell(fmt.Sprintf("message over the %d-byte limit; connection closed", s.cfg.MaxMessageBytes))
			}
			return websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived)
		}
		deadline()
		if err := relayClientFrame(sess, clientID, cd, kind, data); err != nil {
			tell(err.Error())
		}
	}
}

// relayClientFrame decodes one client frame and sends it to the kernel.
func relayClientFrame(sess *session.Session, clientID string, cd codec, kind int, data []byte) error {
	ch, m, err := cd.decode(kind, data)
	if err != nil {
		return err
	}
	if ch == jupytermsg.IOPub {
		return errors.New("clients cannot send on the iopub channel")
	}
	return sess.Send(clientID, ch, m)
}

// writeClient owns all writes to conn. After frames are written it pings
// with the last seq written; the pong tells what was delivered.
func (s *Server) writeClient(conn *websocket.Conn, sess *session.Session, clientID string, cd codec, cursor uint64, problems <-chan string, readerDone, kicked <-chan struct{}, ack *delivery) {
	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	write := func(kind int, data []byte) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return conn.WriteMessage(kind, data) == nil
	}
	pinged := cursor
	sendPing := func() bool {
		pinged = cursor
		return conn.WriteControl(websocket.PingMessage, []byte(strconv.FormatUint(cursor, 10)), time.Now().Add(writeTimeout)) == nil
	}
	const batch = 256
	budget := sessionBudget(sess)
	// The ping that acknowledges delivery waits until output pauses: a
	// ping (and its pong) in the middle of an execution's burst of
	// messages costs that execution about half a millisecond.
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	ackArmed := false
	closeWith := func(reason string) {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, reason), time.Now().Add(time.Second))
	}
	const replaced = "replaced by a newer connection with the same session_id"
	for {
		select {
		case <-kicked:
			// Checked here too: a client flooded with output may never
			// leave the loop for the select below.
			closeWith(replaced)
			return
		default:
		}
		b := takeBatch(sess, budget, cursor, clientID, batch)
		if !s.writeBatch(sess, cd, b, write) {
			b.release()
			return
		}
		if cursor != b.through {
			cursor = b.through
			// The batch may have stopped at its bounds: ask again before
			// waiting.
			continue
		}
		changed, closed := b.changed, b.closed
		// One ping in flight at a time: the next goes once it is answered.
		if cursor > pinged && ack.acked.Load() >= pinged && !ackArmed {
			ackTimer.Reset(ackDelay)
			ackArmed = true
		}
		if closed {
			closeWith("session ended: " + sess.Reason())
			return
		}
		select {
		case <-changed:
		case <-ack.ponged:
		case text := <-problems:
			if kind, data := cd.problem(text, sess.KernelSession()); !write(kind, data) {
				return
			}
		case <-ackTimer.C:
			ackArmed = false
			if cursor > pinged && !sendPing() {
				return
			}
		case <-ping.C:
			if !sendPing() {
				return
			}
		case <-kicked:
			closeWith(replaced)
			return
		case <-readerDone:
			return
		}
	}
}

// writeBatch writes a batch to a websocket client, each message charged
// while its frame is written and let go once written; false means the
// connection failed. Its messages are all let go (written or skipped) when
// it returns true.
func (s *Server) writeBatch(sess *session.Session, cd codec, b *heldBatch, write func(kind int, data []byte) bool) bool {
	writeEntry := func(e session.Entry) bool {
		kind, data, err := cd.encode(e)
		if err != nil {
			s.log.Warn().Err(err).Str("session", sess.ID()).Msg("encode message")
			return true
		}
		return write(kind, data)
	}
	if b.missed > 0 && len(b.entries) > 0 {
		if notice, err := truncationNotice(sess, b.entries[0], b.missed); err == nil && !writeEntry(notice) {
			return false
		}
	}
	for i, e := range b.entries {
		kind, data, err := cd.encode(e)
		if err != nil {
			s.log.Warn().Err(err).Str("session", sess.ID()).Msg("encode message")
			b.done(i)
			continue
		}
		frame, ok := b.holdFrame(i, len(data))
		if !ok {
			continue
		}
		b.done(i)
		if notice, ok := b.skipNotice(sess, e.Seq-1); ok && !writeEntry(notice) {
			frame.Release()
			return false
		}
		ok = write(kind, data)
		frame.Release()
		if !ok {
			return false
		}
	}
	if notice, ok := b.skipNotice(sess, b.through); ok {
		return writeEntry(notice)
	}
	return true
}

// ackDelay is how long output must pause before the writer asks the
// client to acknowledge what it has (a resume after a drop repeats at most
// what came in the last ackDelay and round trip).
const ackDelay = 50 * time.Millisecond

// truncationNotice tells a client that fell behind how much output it
// lost, as stderr of the request whose output follows.
func truncationNotice(sess *session.Session, next session.Entry, missed uint64) (session.Entry, error) {
	m, err := sess.GatewayMessage("stream", next.Msg.ParentHeader,
		session.NoticeStream(fmt.Sprintf("%d messages of output were dropped because this client could not keep up", missed)))
	if err != nil {
		return session.Entry{}, err
	}
	return session.Entry{Seq: next.Seq - 1, Channel: jupytermsg.IOPub, Msg: m}, nil
}

// clientQueueBytes bounds the messages one client's transport holds at
// once besides the one it is writing: the batch its writer takes from the
// session's replay (the websocket), the messages of one poll answer, what
// a SockJS connection has handed to its library and not yet seen written.
// A batch always takes one message, however large (up to the per-message
// cap). The replay is the queue behind it, shared by the session's
// clients: a client that falls behind it is told how many messages it
// missed, as before.
const clientQueueBytes = 2 << 20

// heldBatch is a batch of a session's messages a transport holds for one
// client. Each message it holds stays charged to the kernel message budget
// (the replay's charge shared, so that a message the replay lets go
// meanwhile is still charged, and not twice while both hold it) until it
// is written, skipped or the batch let go; so does the frame encoded from
// it, while it is written. A message the budget has no room for is
// skipped for this client, which is told.
type heldBatch struct {
	budget *kernelpool.MessageBudget
	// entries and charges are parallel; a written entry is zeroed so
	// that its message can be collected before the batch ends.
	entries []session.Entry
	charges []*kernelpool.Charge
	// through is the last seq the batch covers, skipped messages included.
	through uint64
	missed  uint64
	// skipped counts messages left out for the budget, not yet told.
	skipped    uint64
	skipParent []byte
	changed    <-chan struct{}
	closed     bool
}

// sessionBudget is the kernel message budget sess's messages are charged to.
func sessionBudget(sess *session.Session) *kernelpool.MessageBudget {
	return sess.Kernel().MessageBudget()
}

// takeBatch takes the messages after cursor client may see, at most limit
// of them and clientQueueBytes together (one at least).
func takeBatch(sess *session.Session, budget *kernelpool.MessageBudget, cursor uint64, client string, limit int) *heldBatch {
	msgs, missed, changed, closed := sess.Replay().SinceWithin(cursor, client, limit, clientQueueBytes)
	b := &heldBatch{budget: budget, through: cursor, missed: missed, changed: changed, closed: closed,
		entries: make([]session.Entry, 0, len(msgs)), charges: make([]*kernelpool.Charge, 0, len(msgs))}
	for _, e := range msgs {
		b.through = e.Seq
		// The replay's charge is shared while it holds the message too;
		// one it has let go meanwhile is charged anew.
		c := e.Charge()
		if !c.Share() {
			var ok bool
			if c, ok = budget.Hold(int64(e.Size())); !ok {
				b.skip(e.Msg.ParentHeader)
				continue
			}
		}
		b.entries = append(b.entries, e)
		b.charges = append(b.charges, c)
	}
	return b
}

func (b *heldBatch) skip(parent []byte) {
	if b.skipped == 0 {
		b.skipParent = parent
	}
	b.skipped++
}

// holdFrame charges the frame encoded from entry i; false means the budget
// has no room for it and the message is skipped (entry i let go).
func (b *heldBatch) holdFrame(i int, frame int) (*kernelpool.Charge, bool) {
	c, ok := b.budget.Hold(int64(frame))
	if !ok {
		b.skip(b.entries[i].Msg.ParentHeader)
		b.done(i)
	}
	return c, ok
}

// done lets entry i go: written or skipped.
func (b *heldBatch) done(i int) {
	b.charges[i].Release()
	b.charges[i] = nil
	b.entries[i] = session.Entry{}
}

// release lets every entry not yet done go, once.
func (b *heldBatch) release() {
	for i := range b.charges {
		if b.charges[i] != nil {
			b.done(i)
		}
	}
}

// skipNotice tells the client how many messages it was not sent because
// the budget had no room to hold them for it, as stderr of the request
// of the first of them, and forgets them; ok is false if there is none.
func (b *heldBatch) skipNotice(sess *session.Session, seq uint64) (session.Entry, bool) {
	if b.skipped == 0 {
		return session.Entry{}, false
	}
	n := b.skipped
	b.skipped = 0
	m, err := sess.GatewayMessage("stream", b.skipParent,
		session.NoticeStream(fmt.Sprintf("%d messages of output were not sent to this client: the server holds as much kernel output as it may (kernel message budget)", n)))
	if err != nil {
		return session.Entry{}, false
	}
	return session.Entry{Seq: seq, Channel: jupytermsg.IOPub, Msg: m}, true
}
