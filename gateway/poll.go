package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// Long-polling is the same session over plain HTTP, for clients whose
// network blocks websockets:
//
//	GET  /kernel/{id}/poll?client=C&since=N[&wait=S] → {"messages":[…],"next":M,"missed":K,"ended":bool,"reason":…}
//	POST /kernel/{id}/poll?client=C  body: one message or an array, as on the websocket
//
// A GET is held open until there is a message after N or the wait ends.
// Messages carry the same seq as on the websocket, so a client can switch
// transports or reconnect without losing or repeating anything.

// pollResponse is the body of a long-poll GET.
type pollResponse struct {
	Messages []json.RawMessage `json:"messages"`
	Next     uint64            `json:"next"`
	Missed   uint64            `json:"missed,omitempty"`
	Ended    bool              `json:"ended"`
	Reason   string            `json:"reason,omitempty"`
}

// pollPresence keeps a polling client counted as attached between polls,
// so a one-shot session does not end while its client is between requests.
type pollPresence struct {
	mu      sync.Mutex
	timers  map[string]*time.Timer
	detachs map[string]func()
}

func (p *pollPresence) mark(sess *session, client string, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.timers == nil {
		p.timers, p.detachs = map[string]*time.Timer{}, map[string]func(){}
	}
	if t, ok := p.timers[client]; ok {
		t.Reset(grace)
		return
	}
	if len(p.timers) >= maxRememberedClients {
		return
	}
	p.detachs[client] = sess.attach()
	sess.metrics.clients.WithLabelValues("polling").Inc()
	p.timers[client] = time.AfterFunc(grace, func() {
		sess.metrics.clients.WithLabelValues("polling").Dec()
		p.mu.Lock()
		detach := p.detachs[client]
		delete(p.timers, client)
		delete(p.detachs, client)
		p.mu.Unlock()
		detach()
	})
}

func (s *Server) pollClient(c echo.Context) (*session, string, error) {
	sess := s.lookup(c.Param("id"))
	if sess == nil {
		return nil, "", httpError(c, http.StatusNotFound, "no such kernel")
	}
	client := c.QueryParam("client")
	if client == "" {
		return nil, "", httpError(c, http.StatusBadRequest, "missing client (the client's session id)")
	}
	return sess, client, nil
}

func (s *Server) pollReceive(c echo.Context) error {
	sess, client, err := s.pollClient(c)
	if sess == nil {
		return err
	}
	since := uint64(0)
	if v := c.QueryParam("since"); v != "" {
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			return httpError(c, http.StatusBadRequest, fmt.Sprintf("invalid since %q", v))
		}
	} else if n, ok := sess.cursor(client); ok {
		since = n
	}
	wait := s.cfg.PollWait
	if v := c.QueryParam("wait"); v != "" {
		if d, err := parseSeconds(v); err == nil {
			wait = min(d, s.cfg.PollWait)
		}
	}
	sess.polls.mark(sess, client, wait+s.cfg.PollWait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		msgs, missed, changed, closed := sess.log.since(since, client, 512)
		if len(msgs) > 0 || closed {
			resp := pollResponse{Next: since, Missed: missed, Messages: []json.RawMessage{}}
			for _, e := range msgs {
				data, err := sageJSON(e)
				if err == nil {
					resp.Messages = append(resp.Messages, data)
				}
				resp.Next = e.seq
			}
			if closed && len(msgs) < 512 {
				resp.Ended, resp.Reason = true, sess.reason()
			}
			sess.rememberCursor(client, resp.Next)
			return c.JSON(http.StatusOK, resp)
		}
		select {
		case <-changed:
		case <-timer.C:
			return c.JSON(http.StatusOK, pollResponse{Next: since, Messages: []json.RawMessage{}})
		case <-c.Request().Context().Done():
			return nil
		}
	}
}

func (s *Server) pollSend(c echo.Context) error {
	sess, client, err := s.pollClient(c)
	if sess == nil {
		return err
	}
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		return httpError(c, http.StatusRequestEntityTooLarge, err.Error())
	}
	var frames []json.RawMessage
	if len(body) > 0 && body[0] == '[' {
		if err := json.Unmarshal(body, &frames); err != nil {
			return httpError(c, http.StatusBadRequest, "invalid JSON array: "+err.Error())
		}
	} else {
		frames = []json.RawMessage{body}
	}
	sess.polls.mark(sess, client, 2*s.cfg.PollWait)
	for i, f := range frames {
		ch, m, err := jupytermsg.DecodeJSONFrame(f)
		if err == nil && ch == jupytermsg.IOPub {
			err = errors.New("clients cannot send on the iopub channel")
		}
		if err == nil {
			err = sess.send(client, ch, m)
		}
		if err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, errSessionEnded) {
				code = http.StatusGone
			}
			return httpError(c, code, fmt.Sprintf("message %d: %v (%d sent before it)", i, err, i))
		}
	}
	return c.JSON(http.StatusAccepted, map[string]int{"sent": len(frames)})
}
