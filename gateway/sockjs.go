package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/igm/sockjs-go/v3/sockjs"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// The Sage cell's own front end talks to its server over SockJS at
// /sockjs: one connection per page (websocket, or xhr-streaming and
// xhr-polling where websockets fail), multiplexed by a prefix before the
// first comma of every message. "<kernel id>/channels,<frame>" carries a
// kernel's messages both ways in the Sage-cell frame form; "complete,<frame>"
// carries completion requests and their replies. cellgate maps each
// kernel's stream onto the same session, replay and cursor as its own
// websocket, so output that came before the page connected is sent first.

const (
	sockjsPrefix = "/sockjs"
	// maxSockJSKernels bounds the kernels one SockJS connection follows.
	maxSockJSKernels = 64
	// completePrefix is the Sage cell's stream for completions.
	completePrefix = "complete"
)

// sockjsHandler serves /sockjs/*; outboxes are its connections'.
func (s *Server) sockjsHandler(outboxes *sockjsOutboxes) http.Handler {
	opts := sockjs.DefaultOptions
	// The client is the page's own copy of sockjs-client: no iframe
	// transport (it would load a script from elsewhere).
	opts.SockJSURL = ""
	opts.CheckOrigin = s.originAllowed
	opts.WebsocketUpgrader = &websocket.Upgrader{CheckOrigin: s.originAllowed}
	opts.WebsocketWriteTimeout = writeTimeout
	opts.HeartbeatDelay = s.cfg.PingInterval
	return sockjs.NewHandler(sockjsPrefix, opts, func(sj sockjs.Session) { s.serveSockJS(sj, outboxes) })
}

// sockjsConn is one page's SockJS connection and the kernel streams it
// carries.
type sockjsConn struct {
	s   *Server
	sj  sockjs.Session
	ctx context.Context

	// sendMu keeps the order of the messages handed to the library the
	// order of out's.
	sendMu sync.Mutex
	out    *sockjsOutbox

	mu      sync.Mutex
	streams map[string]*sockjsStream // by kernel id
	last    *sockjsStream            // the latest kernel, for completions
	wg      sync.WaitGroup
}

// sockjsStream is one kernel's stream on a SockJS connection: a session
// of this instance, or a bridge to the instance that owns it.
type sockjsStream struct {
	sess *session.Session // nil for a kernel of another instance
	// remote is the Sage-cell websocket of a kernel of another instance
	// (sockjsBridge); remoteMu serialises writes to it.
	remote   *websocket.Conn
	remoteMu sync.Mutex
	clientID string
	detach   func(clean bool)
	// completing holds the msg_ids of completion requests sent on the
	// "complete" stream, whose replies go back there.
	mu         sync.Mutex
	completing map[string]bool
}

func (s *Server) serveSockJS(sj sockjs.Session, outboxes *sockjsOutboxes) {
	ctx, cancel := context.WithCancel(sj.Context())
	defer cancel()
	conn := &sockjsConn{s: s, sj: sj, ctx: ctx, streams: map[string]*sockjsStream{}, out: newSockJSOutbox()}
	forget := outboxes.add(sj.ID(), conn.out)
	defer forget()
	// Whatever the library still holds of this connection's is let go
	// with it.
	defer conn.out.close()
	transport := "sockjs"
	s.metrics.session.Clients.WithLabelValues(transport).Inc()
	defer s.metrics.session.Clients.WithLabelValues(transport).Dec()
	for {
		msg, err := sj.RecvCtx(ctx)
		if err != nil {
			break
		}
		conn.receive(msg)
	}
	cancel()
	conn.wg.Wait()
	conn.mu.Lock()
	defer conn.mu.Unlock()
	for _, st := range conn.streams {
		// A SockJS session ends when the page closes or stops polling.
		st.detach(false)
	}
}

// receive takes one message from the page.
func (c *sockjsConn) receive(msg string) {
	prefix, frame, ok := strings.Cut(msg, ",")
	if !ok {
		c.problem("", "a SockJS message must be <kernel id>/channels,<message> or complete,<message>")
		return
	}
	if int64(len(frame)) > c.s.cfg.MaxMessageBytes {
		c.problem(prefix, fmt.Sprintf("message over the %d-byte limit", c.s.cfg.MaxMessageBytes))
		return
	}
	if prefix == completePrefix {
		c.complete(frame)
		return
	}
	id, rest, _ := strings.Cut(prefix, "/")
	if rest != "channels" {
		c.problem(prefix, fmt.Sprintf("unknown SockJS stream %q", prefix))
		return
	}
	st, err := c.stream(id)
	if err != nil {
		c.problem(prefix, err.Error())
		return
	}
	ch, m, err := sageCodec{}.decode(websocket.TextMessage, []byte(frame))
	if err == nil && ch == jupytermsg.IOPub {
		err = fmt.Errorf("clients cannot send on the iopub channel")
	}
	if err == nil {
		err = st.deliver(ch, m, frame)
	}
	if err != nil {
		c.s.metrics.session.Errors.WithLabelValues("client_message").Inc()
		c.problem(prefix, err.Error())
	}
}

// deliver sends a message of the page to the kernel: to its session here,
// or as the page framed it over the bridge to its owner, which checks it
// as its own websocket's.
func (st *sockjsStream) deliver(ch jupytermsg.Channel, m *jupytermsg.Message, frame string) error {
	if st.remote == nil {
		return st.sess.Send(st.clientID, ch, m)
	}
	st.remoteMu.Lock()
	defer st.remoteMu.Unlock()
	_ = st.remote.SetWriteDeadline(time.Now().Add(writeTimeout))
	return st.remote.WriteMessage(websocket.TextMessage, []byte(frame))
}

// live tells whether the stream's kernel may still answer.
func (st *sockjsStream) live() bool {
	if st.remote != nil {
		return true // the bridge closes, and the stream goes, when the session ends
	}
	return st.sess.Reason() == ""
}

// stream is kernel id's stream, started on its first message.
func (c *sockjsConn) stream(id string) (*sockjsStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.streams[id]; st != nil {
		c.last = st
		return st, nil
	}
	if len(c.streams) >= maxSockJSKernels {
		return nil, fmt.Errorf("a SockJS connection carries at most %d kernels", maxSockJSKernels)
	}
	clientID := "sockjs-" + c.sj.ID() + "-" + id
	sess := c.s.sessions.getAPI(id, session.SageCell)
	if sess == nil {
		// Another instance's, in a cluster: bridged over a websocket to it.
		remote, err := c.s.sockjsBridge(c.ctx, c.sj.Request(), id, clientID)
		if err != nil {
			return nil, err
		}
		st := &sockjsStream{remote: remote, clientID: clientID, completing: map[string]bool{},
			detach: func(bool) { _ = remote.Close() }}
		c.streams[id] = st
		c.last = st
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.relay(id, st)
		}()
		return st, nil
	}
	st := &sockjsStream{sess: sess, clientID: clientID, completing: map[string]bool{}}
	st.detach = sess.Attach(session.TransportSockJS)
	cursor := sess.StartCursor(st.clientID, sageCodec{}.resumeFromStart())
	c.streams[id] = st
	c.last = st
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.write(st, cursor)
	}()
	return st, nil
}

// write sends the kernel's messages to the page until the session or the
// connection ends. SockJS has no acknowledgements: what was handed to the
// connection counts as delivered.
func (c *sockjsConn) write(st *sockjsStream, cursor uint64) {
	defer func() { st.sess.RememberCursor(st.clientID, cursor) }()
	const batch = 256
	budget := sessionBudget(st.sess)
	prefix := st.sess.ID() + "/channels"
	for {
		b := takeBatch(st.sess, budget, cursor, st.clientID, batch)
		ok := c.writeBatch(st, prefix, b)
		b.release()
		if !ok {
			return
		}
		if cursor != b.through {
			cursor = b.through
			continue // the batch may have stopped at its bounds
		}
		if b.closed {
			return
		}
		select {
		case <-b.changed:
		case <-c.ctx.Done():
			return
		}
	}
}

// writeBatch hands b's messages to the page, each once the outbox has room
// and charged until the library has written it; false means the connection
// is over.
func (c *sockjsConn) writeBatch(st *sockjsStream, prefix string, b *heldBatch) bool {
	sendNotice := func(e session.Entry) bool {
		frame, err := sageJSON(e)
		return err != nil || c.sendText(prefix+","+string(frame), nil)
	}
	if b.missed > 0 && len(b.entries) > 0 {
		if notice, err := truncationNotice(st.sess, b.entries[0], b.missed); err == nil && !sendNotice(notice) {
			return false
		}
	}
	for i, e := range b.entries {
		if !c.out.waitRoom(c.ctx) {
			return false
		}
		to := prefix
		if e.Channel == jupytermsg.Shell && st.completion(e.Msg.ParentMsgID()) {
			to = completePrefix
		}
		frame, err := sageJSON(e)
		if err != nil {
			c.s.log.Warn().Err(err).Str("session", st.sess.ID()).Msg("encode message")
			b.done(i)
			continue
		}
		text := to + "," + string(frame)
		frame = nil
		charge, ok := b.holdFrame(i, len(text))
		if !ok {
			continue
		}
		b.done(i)
		if notice, ok := b.skipNotice(st.sess, e.Seq-1); ok && !sendNotice(notice) {
			charge.Release()
			return false
		}
		if !c.sendText(text, charge) {
			return false
		}
	}
	if notice, ok := b.skipNotice(st.sess, b.through); ok {
		return sendNotice(notice)
	}
	return true
}

// relay sends the messages of a kernel of another instance, as its owner
// frames them, to the page until the bridge or the connection closes; the
// stream is then forgotten, so that a later message finds the kernel anew
// (or hears that it ended).
func (c *sockjsConn) relay(id string, st *sockjsStream) {
	stop := context.AfterFunc(c.ctx, func() { _ = st.remote.Close() })
	defer stop()
	defer func() {
		_ = st.remote.Close()
		c.mu.Lock()
		if c.streams[id] == st {
			delete(c.streams, id)
			if c.last == st {
				c.last = nil
			}
		}
		c.mu.Unlock()
	}()
	prefix := id + "/channels"
	for {
		_, data, err := st.remote.ReadMessage()
		if err != nil {
			return
		}
		var routing struct {
			Channel      string `json:"channel"`
			ParentHeader struct {
				MsgID string `json:"msg_id"`
			} `json:"parent_header"`
		}
		to := prefix
		if json.Unmarshal(data, &routing) == nil && routing.Channel == string(jupytermsg.Shell) && st.completion(routing.ParentHeader.MsgID) {
			to = completePrefix
		}
		if !c.out.waitRoom(c.ctx) || !c.sendText(to+","+string(data), nil) {
			return
		}
	}
}

func (c *sockjsConn) send(prefix string, e session.Entry) bool {
	frame, err := sageJSON(e)
	if err != nil {
		c.s.log.Warn().Err(err).Str("session", e.Msg.Header.Session).Msg("encode message")
		return true
	}
	return c.sendText(prefix+","+string(frame), nil)
}

// sendText hands one message to the library, in the outbox with charge
// until a frame carrying it is written; false means the connection is
// over (what it held is let go when the connection ends).
func (c *sockjsConn) sendText(text string, charge *kernelpool.Charge) bool {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	// Into the outbox first: on an http transport the library may write
	// it within Send.
	if !c.out.push(int64(len(text)), charge) {
		return false
	}
	if c.sj.Send(text) != nil {
		return false
	}
	switch c.sj.ReceiverType() {
	case sockjs.ReceiverTypeWebsocket, sockjs.ReceiverTypeRawWebsocket:
		// The websocket receiver writes within Send, or has failed and
		// the connection is ending.
		c.out.writtenAll()
	}
	return true
}

// problem tells the page what went wrong with a message on stream prefix.
func (c *sockjsConn) problem(prefix, text string) {
	_, data := sageCodec{}.problem(text, "")
	if prefix == "" {
		prefix = "gateway"
	}
	c.sendText(prefix+","+string(data), nil)
}

// completion reports (once) whether msgID was a request of the complete
// stream.
func (st *sockjsStream) completion(msgID string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.completing[msgID] {
		delete(st.completing, msgID)
		return true
	}
	return false
}

// maxPendingCompletions bounds the completion requests a stream waits on.
const maxPendingCompletions = 64

// complete answers a completion request. The Sage Cell Server completes
// on a kernel of its own; cellgate asks the connection's latest kernel
// (the code's own namespace), and answers "no completions" when the page
// has no kernel yet.
func (c *sockjsConn) complete(frame string) {
	ch, m, err := sageCodec{}.decode(websocket.TextMessage, []byte(frame))
	if err != nil {
		c.problem(completePrefix, err.Error())
		return
	}
	if ch != jupytermsg.Shell || m.Header.MsgType != "complete_request" {
		c.problem(completePrefix, fmt.Sprintf("the complete stream takes complete_request, not %s on %s", m.Header.MsgType, ch))
		return
	}
	c.mu.Lock()
	st := c.last
	c.mu.Unlock()
	if st != nil && st.live() {
		st.mu.Lock()
		room := len(st.completing) < maxPendingCompletions
		if room {
			st.completing[m.Header.MsgID] = true
		}
		st.mu.Unlock()
		if room && st.deliver(jupytermsg.Shell, m, frame) == nil {
			return
		}
		st.completion(m.Header.MsgID)
	}
	c.answerNoCompletions(m)
}

// answerNoCompletions is a complete_reply with no matches.
func (c *sockjsConn) answerNoCompletions(request *jupytermsg.Message) {
	var req struct {
		CursorPos int `json:"cursor_pos"`
	}
	_ = json.Unmarshal(request.Content, &req)
	reply, err := jupytermsg.New("complete_reply", request.Header.Session, nil, map[string]any{
		"status": "ok", "matches": []string{}, "cursor_start": req.CursorPos, "cursor_end": req.CursorPos, "metadata": map[string]any{},
	})
	if err != nil {
		return
	}
	reply.ParentHeader = request.RawHeader
	c.send(completePrefix, session.Entry{Channel: jupytermsg.Shell, Msg: reply})
}

// sockjsRoutes mounts /sockjs on e. Its websockets get the message cap
// through the connection (the library sets no read limit); the xhr
// transports' bodies are capped by the body limit.
func (s *Server) sockjsRoutes(e *echo.Echo) {
	outboxes := &sockjsOutboxes{byID: map[string]*sockjsOutbox{}}
	handler := s.sockjsHandler(outboxes)
	h := echo.WrapHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := sockjsReceiving(r); ok {
			w = &sockjsFrameWriter{ResponseWriter: w, outboxes: outboxes, session: id}
		}
		switch {
		case websocket.IsWebSocketUpgrade(r):
			w = limitingWriter{ResponseWriter: w, limit: s.cfg.MaxMessageBytes}
		case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/xhr"):
			retryXHRPoll(handler, w, r)
			return
		}
		handler.ServeHTTP(w, r)
	}))
	e.Any(sockjsPrefix, h)
	e.Any(sockjsPrefix+"/*", h)
}

// anotherConnection is SockJS's close frame for a second receiving
// request while one is attached.
const anotherConnection = `c[2010,`

// xhrPollRetries are the pauses before an xhr poll answered
// anotherConnection is tried again.
func xhrPollRetries() []time.Duration {
	return []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond}
}

// retryXHRPoll works around a race in sockjs-go: it detaches a finished xhr
// poll's receiver on a goroutine of its own, so a client's next poll, if it
// comes first, is answered "2010 Another connection still open" and the
// page's connection is closed (a loaded make test run saw it). An xhr
// poll's answer is one frame, so it is held, and a 2010 answer tried again
// once the detach has had its turn; only a 2010 that persists (a client
// that really polls twice at once) is sent.
func retryXHRPoll(handler http.Handler, w http.ResponseWriter, r *http.Request) {
	retries := xhrPollRetries()
	for attempt := 0; ; attempt++ {
		held := &heldResponse{header: http.Header{}, status: http.StatusOK}
		handler.ServeHTTP(held, r)
		if attempt < len(retries) && bytes.HasPrefix(held.body.Bytes(), []byte(anotherConnection)) && r.Context().Err() == nil {
			time.Sleep(retries[attempt])
			continue
		}
		for k, v := range held.header {
			w.Header()[k] = v
		}
		w.WriteHeader(held.status)
		_, _ = w.Write(held.body.Bytes())
		return
	}
}

// heldResponse keeps an answer until it is known to be the one to send.
type heldResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (h *heldResponse) Header() http.Header         { return h.header }
func (h *heldResponse) Write(b []byte) (int, error) { return h.body.Write(b) }
func (h *heldResponse) WriteHeader(status int)      { h.status = status }
