package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
)

// Long-polling is the same session over plain HTTP, for clients whose
// network blocks websockets:
//
//	GET  /kernel/{id}/poll?client=C&since=N[&wait=S] → {"messages":[…],"next":M,"missed":K,"ended":bool,"reason":…}
//	POST /kernel/{id}/poll?client=C  body: one message or an array, as on the websocket
//
// A GET is held open until there is a message after N or the wait ends.
// Messages carry the same seq as on the websocket, so a client can switch
// transports or reconnect without losing or repeating anything. A since
// beyond the session's last message is answered 400: no such message was
// ever sent, so the client has mixed up sessions or counters, and waiting
// would never give it anything.
//
// Once a session has ended, for a while (tombstoneTTL) a GET answers
// {"ended": true, "reason": …} and a POST 410, so that a client that was
// between requests when it ended learns why.

// pollResponse is the body of a long-poll GET.
type pollResponse struct {
	Messages []json.RawMessage `json:"messages"`
	Next     uint64            `json:"next"`
	Missed   uint64            `json:"missed,omitempty"`
	Ended    bool              `json:"ended"`
	Reason   string            `json:"reason,omitempty"`
}

// pollBatch caps the messages of one poll answer (clientQueueBytes their
// bytes).
const pollBatch = 512

// pollTarget is what a poll request names: a live session, or the
// tombstone of an ended one.
func (s *Server) pollTarget(c echo.Context) (*session.Session, *tombstone, string, error) {
	id, err := pathParam(c, "id")
	if err != nil {
		return nil, nil, "", httpError(c, http.StatusNotFound, "no such kernel")
	}
	client := c.QueryParam("client")
	if client == "" {
		return nil, nil, "", httpError(c, http.StatusBadRequest, "missing client (the client's session id)")
	}
	if sess := s.sessions.getAPI(id, session.SageCell); sess != nil {
		return sess, nil, client, nil
	}
	if t, ok := s.sessions.tombstone(id); ok && t.api == session.SageCell {
		return nil, &t, client, nil
	}
	return nil, nil, "", httpError(c, http.StatusNotFound, "no such kernel")
}

// parseSince reads a client's since: a sequence number the session has
// handed out (or 0).
func parseSince(v string, last uint64) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid since %q", v)
	}
	if n > last {
		return 0, fmt.Errorf("since %d is beyond the session's last message (%d)", n, last)
	}
	return n, nil
}

// parseWait reads a poll's wait, capped by the server's.
func parseWait(v string, limit time.Duration) (time.Duration, error) {
	if v == "" {
		return limit, nil
	}
	d, err := parseSeconds(v)
	if err != nil {
		return 0, fmt.Errorf("invalid wait: %w", err)
	}
	return min(d, limit), nil
}

func (s *Server) pollReceive(c echo.Context) error {
	sess, ended, client, err := s.pollTarget(c)
	if ended != nil {
		asked, err := askedSince(c, ended.last)
		if err != nil {
			return httpError(c, http.StatusBadRequest, err.Error())
		}
		since := ended.last
		if ended.foreign {
			since = 0 // ended on another instance: its last is not known here
		}
		if asked != nil {
			since = *asked
		}
		return c.JSON(http.StatusOK, pollResponse{Messages: []json.RawMessage{}, Next: since, Ended: true, Reason: ended.reason})
	}
	if sess == nil {
		return err
	}
	asked, err := askedSince(c, sess.Replay().Last())
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	since := uint64(0)
	if asked != nil {
		since = *asked
	} else if n, ok := sess.Cursor(client); ok {
		since = n
	}
	wait, err := parseWait(c.QueryParam("wait"), s.cfg.PollWait)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	sess.KeepAttached(client, wait+s.cfg.PollWait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	budget := sessionBudget(sess)
	for {
		b := takeBatch(sess, budget, since, client, pollBatch)
		if b.through != since || b.closed {
			return s.answerPoll(c, sess, client, b)
		}
		select {
		case <-b.changed:
		case <-timer.C:
			return c.JSON(http.StatusOK, pollResponse{Next: since, Messages: []json.RawMessage{}})
		case <-c.Request().Context().Done():
			return nil
		}
	}
}

// pollTail is a poll answer after its messages.
type pollTail struct {
	Next   uint64 `json:"next"`
	Missed uint64 `json:"missed,omitempty"`
	Ended  bool   `json:"ended"`
	Reason string `json:"reason,omitempty"`
}

// answerPoll writes a poll answer of b's messages, one message at a time:
// the answer is never encoded whole, each message is charged while its
// encoding is written, and a client that does not read the answer holds
// the batch for at most writeTimeout.
func (s *Server) answerPoll(c echo.Context, sess *session.Session, client string, b *heldBatch) error {
	defer b.release()
	tail := pollTail{Next: b.through, Missed: b.missed}
	if b.closed {
		if more, _, _, _ := sess.Replay().Since(b.through, client, 1); len(more) == 0 {
			tail.Ended, tail.Reason = true, sess.Reason()
		}
	}
	sess.RememberCursor(client, tail.Next)
	w := c.Response()
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	defer func() {
		// Flushed under the deadline; then lifted, as the server sets
		// none of its own and one left behind would cut the connection's
		// next poll.
		_ = rc.Flush()
		_ = rc.SetWriteDeadline(time.Time{})
	}()
	w.Header().Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	w.WriteHeader(http.StatusOK)
	sep := ""
	writeRaw := func(data []byte) bool {
		if _, err := io.WriteString(w, sep); err != nil {
			return false
		}
		sep = ","
		_, err := w.Write(data)
		return err == nil
	}
	if _, err := io.WriteString(w, `{"messages":[`); err != nil {
		return nil
	}
	for i, e := range b.entries {
		data, err := sageJSON(e)
		if err != nil {
			b.done(i)
			continue
		}
		frame, ok := b.holdFrame(i, len(data))
		if !ok {
			continue
		}
		b.done(i)
		if notice, ok := b.skipNotice(sess, e.Seq-1); ok {
			if nd, err := sageJSON(notice); err == nil && !writeRaw(nd) {
				frame.Release()
				return nil
			}
		}
		ok = writeRaw(data)
		frame.Release()
		if !ok {
			return nil
		}
	}
	if notice, ok := b.skipNotice(sess, b.through); ok {
		if nd, err := sageJSON(notice); err == nil && !writeRaw(nd) {
			return nil
		}
	}
	end, err := json.Marshal(tail)
	if err != nil {
		return nil
	}
	_, _ = io.WriteString(w, "],"+string(end[1:]))
	return nil
}

// splitPollBody reads a poll POST body: one message frame, or a JSON
// array of them.
func splitPollBody(body []byte) ([]json.RawMessage, error) {
	trimmed := bytes.TrimLeft(body, jsonSpace)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var frames []json.RawMessage
		if err := json.Unmarshal(trimmed, &frames); err != nil {
			return nil, fmt.Errorf("invalid JSON array: %w", err)
		}
		return frames, nil
	}
	return []json.RawMessage{body}, nil
}

// jsonSpace is the white space JSON allows between tokens.
const jsonSpace = " \t\n\r"

func (s *Server) pollSend(c echo.Context) error {
	sess, ended, client, err := s.pollTarget(c)
	if ended != nil {
		return httpError(c, http.StatusGone, "session has ended: "+ended.reason)
	}
	if sess == nil {
		return err
	}
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		// The body limit is the only way reading a request body fails here.
		return httpError(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over the %d-byte limit", s.cfg.MaxMessageBytes))
	}
	frames, err := splitPollBody(body)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	sess.KeepAttached(client, 2*s.cfg.PollWait)
	for i, f := range frames {
		// A poll frame is what a Sage-cell websocket text frame carries.
		if err := relayClientFrame(sess, client, sageCodec{}, websocket.TextMessage, f); err != nil {
			return httpError(c, statusOf(err, http.StatusBadRequest), fmt.Sprintf("message %d: %v (%d sent before it)", i, err, i))
		}
	}
	return c.JSON(http.StatusAccepted, map[string]int{"sent": len(frames)})
}
