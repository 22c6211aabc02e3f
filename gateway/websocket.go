package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// codec is one websocket encoding of Jupyter messages.
type codec interface {
	// subprotocols the codec can speak, in order of preference.
	subprotocols() []string
	// forProtocol returns the codec for the negotiated subprotocol.
	forProtocol(p string) codec
	decode(kind int, data []byte) (jupytermsg.Channel, *jupytermsg.Message, error)
	encode(e outgoing) (kind int, data []byte, err error)
	// problem is how a per-client error is told to this client.
	problem(text string) (kind int, data []byte)
	// resumeFromStart says whether a client new to the session first gets
	// the session's buffered output.
	resumeFromStart() bool
}

const writeTimeout = 30 * time.Second

// bridge runs one websocket client of a session until either side ends.
func (s *Server) bridge(c echo.Context, sess *session, cd codec) error {
	clientSession := c.QueryParam("session_id")
	if clientSession == "" {
		clientSession = uuid.NewString()
	}
	cursor, err := s.startCursor(c, sess, clientSession, cd.resumeFromStart())
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	up := websocket.Upgrader{
		CheckOrigin:  s.originAllowed,
		Subprotocols: cd.subprotocols(),
	}
	conn, err := up.Upgrade(c.Response(), c.Request(), nil)
	if err != nil {
		return nil // the upgrader has answered
	}
	defer conn.Close()
	cd = cd.forProtocol(conn.Subprotocol())
	conn.SetReadLimit(s.cfg.MaxMessageBytes)
	detach := sess.attach()
	defer detach()
	transport := "websocket_" + sess.api
	s.metrics.clients.WithLabelValues(transport).Inc()
	defer s.metrics.clients.WithLabelValues(transport).Dec()

	problems := make(chan string, 16)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		s.readClient(conn, sess, clientSession, cd, problems)
	}()
	cursor = s.writeClient(conn, sess, clientSession, cd, cursor, problems, readerDone)
	sess.rememberCursor(clientSession, cursor)
	_ = conn.Close()
	<-readerDone
	return nil
}

// startCursor picks the sequence number after which a client starts: the
// one it asks for (?since=N), the one it reached on its last connection,
// or the start or the end of the buffer for a new client.
func (s *Server) startCursor(c echo.Context, sess *session, clientSession string, fromStart bool) (uint64, error) {
	if v := c.QueryParam("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid since %q", v)
		}
		return n, nil
	}
	if n, ok := sess.cursor(clientSession); ok {
		return n, nil
	}
	if fromStart {
		return 0, nil
	}
	return sess.log.last(), nil
}

func (s *Server) readClient(conn *websocket.Conn, sess *session, clientSession string, cd codec, problems chan<- string) {
	tell := func(text string) {
		s.metrics.errors.WithLabelValues("client_message").Inc()
		select {
		case problems <- text:
		default: // the client is not reading its errors either
		}
	}
	deadline := func() { _ = conn.SetReadDeadline(time.Now().Add(2*s.cfg.PingInterval + writeTimeout)) }
	deadline()
	conn.SetPongHandler(func(string) error { deadline(); return nil })
	for {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				tell(fmt.Sprintf("message over the %d-byte limit; connection closed", s.cfg.MaxMessageBytes))
			}
			return
		}
		deadline()
		ch, m, err := cd.decode(kind, data)
		if err != nil {
			tell(err.Error())
			continue
		}
		if ch == jupytermsg.IOPub {
			tell("clients cannot send on the iopub channel")
			continue
		}
		if err := sess.send(clientSession, ch, m); err != nil {
			tell(err.Error())
		}
	}
}

// writeClient owns all writes to conn; it returns the last sequence number
// delivered.
func (s *Server) writeClient(conn *websocket.Conn, sess *session, clientSession string, cd codec, cursor uint64, problems <-chan string, readerDone <-chan struct{}) uint64 {
	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	write := func(kind int, data []byte) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return conn.WriteMessage(kind, data) == nil
	}
	const batch = 256
	for {
		msgs, missed, changed, closed := sess.log.since(cursor, clientSession, batch)
		if missed > 0 && len(msgs) > 0 {
			if notice, err := truncationNotice(sess, msgs[0], missed); err == nil {
				if kind, data, err := cd.encode(notice); err == nil && !write(kind, data) {
					return cursor
				}
			}
		}
		for _, e := range msgs {
			kind, data, err := cd.encode(e)
			if err != nil {
				s.log.Warn().Err(err).Str("session", sess.id).Msg("encode message")
			} else if !write(kind, data) {
				return cursor
			}
			cursor = e.seq
		}
		if len(msgs) == batch {
			continue
		}
		if closed {
			reason := "session ended: " + sess.reason()
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, reason), time.Now().Add(time.Second))
			return cursor
		}
		select {
		case <-changed:
		case text := <-problems:
			if kind, data := cd.problem(text); !write(kind, data) {
				return cursor
			}
		case <-ping.C:
			if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)) != nil {
				return cursor
			}
		case <-readerDone:
			return cursor
		}
	}
}

// truncationNotice tells a client that fell behind how much output it
// lost, as stderr of the request whose output follows.
func truncationNotice(sess *session, next outgoing, missed uint64) (outgoing, error) {
	m, err := jupytermsg.New("stream", sess.kernel.Session, nil, jupytermsg.Stream{
		Name: "stderr",
		Text: fmt.Sprintf("\n[cellgate: %d messages of output were dropped because this client could not keep up]\n", missed),
	})
	if err != nil {
		return outgoing{}, err
	}
	m.ParentHeader = next.msg.ParentHeader
	return outgoing{seq: next.seq - 1, channel: jupytermsg.IOPub, msg: m}, nil
}
