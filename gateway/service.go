package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// serviceResult is the answer of POST /service, the Sage Cell Server's
// one-shot computation, plus the rich outputs.
type serviceResult struct {
	Success      bool              `json:"success"`
	Stdout       string            `json:"stdout"`
	Stderr       string            `json:"stderr"`
	ExecuteReply json.RawMessage   `json:"execute_reply"`
	Outputs      []json.RawMessage `json:"outputs"`
	Files        []fileLink        `json:"files"`
	Error        string            `json:"error,omitempty"`
}

// service is POST /service: run code once on a fresh kernel and answer
// with what it printed.
func (s *Server) service(c echo.Context) error {
	body, err := formOrJSON(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
	}
	code := param(c, body, "code")
	if code == "" {
		return httpError(c, http.StatusBadRequest, "missing code")
	}
	if len(code) > s.cfg.MaxCodeBytes {
		return httpError(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("code is %d characters; the limit is %d", len(code), s.cfg.MaxCodeBytes))
	}
	asked := param(c, body, "kernel_name")
	if asked == "" {
		asked = param(c, body, "language")
	}
	spec, err := s.resolveKernel(asked)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	life := lifetime{idle: s.cfg.ServiceTimeout * 2, maxIdle: s.cfg.ServiceTimeout * 2, lifespan: s.cfg.ServiceTimeout * 2}
	sess, err := s.startSession(c.Request().Context(), spec, "service", c.RealIP(), "", s.baseURL(c).String(), life)
	if err != nil {
		return sessionError(c, err)
	}
	defer sess.end(endOneShot)
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.cfg.ServiceTimeout)
	defer cancel()
	res, err := s.runService(ctx, sess, code)
	if errors.Is(err, context.DeadlineExceeded) {
		res.Error = fmt.Sprintf("computation exceeded the %s limit", s.cfg.ServiceTimeout)
		return c.JSON(http.StatusOK, res)
	}
	if err != nil {
		return httpError(c, http.StatusInternalServerError, err.Error())
	}
	return c.JSON(http.StatusOK, res)
}

// runService executes code through the session, so /service goes the same
// way as every other execution, and collects what a one-shot caller needs.
func (s *Server) runService(ctx context.Context, sess *session, code string) (serviceResult, error) {
	res := serviceResult{Outputs: []json.RawMessage{}, Files: []fileLink{}}
	const client = "service"
	req, err := jupytermsg.New("execute_request", client, nil, jupytermsg.ExecuteRequest{
		Code: code, StoreHistory: true, UserExpressions: map[string]string{}, StopOnError: true,
	})
	if err != nil {
		return res, err
	}
	detach := sess.attach()
	defer detach()
	cursor := sess.log.last()
	if err := sess.send(client, jupytermsg.Shell, req); err != nil {
		return res, err
	}
	idle := false
	for res.ExecuteReply == nil || !idle {
		msgs, _, changed, closed := sess.log.since(cursor, client, 0)
		for _, e := range msgs {
			cursor = e.seq
			if e.msg.ParentMsgID() != req.Header.MsgID {
				continue
			}
			if collectServiceOutput(&res, e.msg) {
				idle = true
			}
		}
		if res.ExecuteReply != nil && idle {
			break
		}
		if closed {
			res.Error = "kernel ended during the computation: " + sess.reason()
			if err := sess.kernel.Err(); err != nil {
				res.Error += " (" + err.Error() + ")"
			}
			return res, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	var reply jupytermsg.ExecuteReply
	_ = json.Unmarshal(res.ExecuteReply, &reply)
	res.Success = reply.Status == "ok"
	return res, nil
}

// collectServiceOutput adds m to res and reports whether it is the final
// idle status.
func collectServiceOutput(res *serviceResult, m *jupytermsg.Message) bool {
	switch m.Header.MsgType {
	case "stream":
		var st jupytermsg.Stream
		if m.DecodeContent(&st) == nil {
			if st.Name == "stderr" {
				res.Stderr += st.Text
			} else {
				res.Stdout += st.Text
			}
		}
	case "execute_reply":
		res.ExecuteReply = m.Content
	case "execute_result", "display_data", "error":
		out, _ := json.Marshal(map[string]any{"msg_type": m.Header.MsgType, "content": m.Content})
		res.Outputs = append(res.Outputs, out)
		if m.Header.MsgType == "error" {
			var e jupytermsg.Error
			if m.DecodeContent(&e) == nil {
				res.Stderr += e.EName + ": " + e.EValue + "\n"
			}
		}
	case filesMsgType:
		var announced struct {
			Files []fileLink `json:"files"`
		}
		if m.DecodeContent(&announced) == nil {
			res.Files = append(res.Files, announced.Files...)
		}
	case "status":
		var st jupytermsg.Status
		return m.DecodeContent(&st) == nil && st.ExecutionState == jupytermsg.StateIdle
	}
	return false
}
