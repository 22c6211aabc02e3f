package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// What one /service answer may hold: a computation can print without end
// within its time limit, and the answer is built in memory.
const (
	serviceMaxStream      = 1 << 20 // bytes of stdout, and of stderr
	serviceMaxOutputs     = 256
	serviceMaxOutputBytes = 4 << 20
	// serviceMaxExpressions bounds the user_expressions of one request.
	serviceMaxExpressions = 64
)

// serviceResult is the answer of POST /service, the Sage Cell Server's
// one-shot computation, plus the rich outputs and the permalink id.
// Success is true only when the computation finished normally: its reply
// says ok and its kernel went idle within the time limit.
type serviceResult struct {
	Success          bool               `json:"success"`
	Stdout           string             `json:"stdout"`
	Stderr           string             `json:"stderr"`
	ExecuteReply     json.RawMessage    `json:"execute_reply"`
	Outputs          []json.RawMessage  `json:"outputs"`
	OutputsTruncated bool               `json:"outputs_truncated,omitempty"`
	Files            []session.FileLink `json:"files"`
	Permalink        string             `json:"permalink,omitempty"`
	Error            string             `json:"error,omitempty"`
}

// service is POST /service: run code once on a fresh kernel and answer
// with what it printed. A user_expressions field (a JSON object of names
// to expressions, as a form field or in a JSON body) is evaluated after the
// code, as the Sage cell does; its values are in execute_reply.
func (s *Server) service(c echo.Context) error {
	raw := s.keepBody(c)
	body, code, err := codeRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	if n := utf8.RuneCountInString(code); n > s.cfg.MaxCodeChars {
		return httpError(c, http.StatusRequestEntityTooLarge, fmt.Sprintf("code is %d characters; the limit is %d", n, s.cfg.MaxCodeChars))
	}
	exprs, err := userExpressions(c, body)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	choice, err := s.resolveSageChoice(askedKernel(c, body))
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	if s.placeElsewhere(c, choice.Kernel, raw) {
		return nil
	}
	life := session.Lifetime{Idle: s.cfg.ServiceTimeout * 2, MaxIdle: s.cfg.ServiceTimeout * 2, Lifespan: s.cfg.ServiceTimeout * 2}
	sess, err := s.startSession(c.Request().Context(), choice, session.Service, c.RealIP(), "", s.baseURL(c).String(), life)
	if err != nil {
		return answerError(c, err)
	}
	defer sess.End(session.EndOneShot)
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.cfg.ServiceTimeout)
	defer cancel()
	res, err := runService(ctx, sess, code, exprs)
	if errors.Is(err, context.DeadlineExceeded) {
		res.Error = fmt.Sprintf("computation exceeded the %s limit", s.cfg.ServiceTimeout)
		return c.JSON(http.StatusOK, res)
	}
	if err != nil {
		return fmt.Errorf("service computation: %w", err)
	}
	return c.JSON(http.StatusOK, res)
}

// userExpressions reads a /service request's user_expressions: a JSON
// object of names to expressions, given as a form field (text) or as an
// object in a JSON body. None is an empty object.
func userExpressions(c echo.Context, body map[string]any) (map[string]string, error) {
	var raw []byte
	if v, ok := body["user_expressions"]; ok && v != nil {
		if text, isText := v.(string); isText {
			raw = []byte(text)
		} else {
			raw, _ = json.Marshal(v)
		}
	} else if text := c.FormValue("user_expressions"); text != "" {
		raw = []byte(text)
	}
	return parseUserExpressions(raw)
}

// parseUserExpressions decodes user_expressions: at most
// serviceMaxExpressions names, each an expression in a string.
func parseUserExpressions(raw []byte) (map[string]string, error) {
	exprs := map[string]string{}
	if len(raw) == 0 {
		return exprs, nil
	}
	if err := json.Unmarshal(raw, &exprs); err != nil || exprs == nil {
		return nil, errors.New(`user_expressions must be a JSON object of names to expressions, e.g. {"n": "len(x)"}`)
	}
	if len(exprs) > serviceMaxExpressions {
		return nil, fmt.Errorf("user_expressions has %d names; the limit is %d", len(exprs), serviceMaxExpressions)
	}
	return exprs, nil
}

// serviceCollector gathers what a one-shot caller gets, within bounds.
type serviceCollector struct {
	stdout, stderr boundedText
	outputs        []json.RawMessage
	outputBytes    int
	outputsCut     bool
	reply          *jupytermsg.Message
	files          []session.FileLink
}

// boundedText keeps the first limit bytes of a stream, then a marker.
type boundedText struct {
	b     strings.Builder
	limit int
	cut   bool
}

func (t *boundedText) add(s string) {
	if t.cut {
		return
	}
	if room := t.limit - t.b.Len(); len(s) > room {
		// Cut at a character boundary, not inside one.
		for room > 0 && !utf8.RuneStart(s[room]) {
			room--
		}
		t.b.WriteString(s[:room])
		t.b.WriteString("\n" + session.NoticeStream(fmt.Sprintf("output truncated after %d bytes", t.limit)).Text)
		t.cut = true
		return
	}
	t.b.WriteString(s)
}

// runService executes code through the session, so /service goes the same
// way as every other execution, and collects what a one-shot caller needs.
// The result's Success is set only if the computation finishes normally.
func runService(ctx context.Context, sess *session.Session, code string, exprs map[string]string) (serviceResult, error) {
	col := &serviceCollector{stdout: boundedText{limit: serviceMaxStream}, stderr: boundedText{limit: serviceMaxStream}}
	const client = "service"
	req, err := jupytermsg.New("execute_request", client, nil, jupytermsg.ExecuteRequest{
		Code: code, StoreHistory: true, UserExpressions: exprs, StopOnError: true,
	})
	if err != nil {
		return col.result(), fmt.Errorf("make execute_request: %w", err)
	}
	detach := sess.Attach(session.TransportService)
	defer detach(true)
	cursor := sess.Replay().Last()
	if err := sess.Send(client, jupytermsg.Shell, req); err != nil {
		return col.result(), err
	}
	idle := false
	for col.reply == nil || !idle {
		msgs, _, changed, closed := sess.Replay().Since(cursor, client, pollBatch)
		for _, e := range msgs {
			cursor = e.Seq
			if e.Msg.ParentMsgID() != req.Header.MsgID {
				continue
			}
			if col.add(e.Msg) {
				idle = true
			}
		}
		if col.reply != nil && idle {
			break
		}
		if len(msgs) == pollBatch {
			continue
		}
		if closed {
			res := col.result()
			res.Success = false
			res.Error = "kernel ended during the computation: " + sess.Reason()
			return res, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			res := col.result()
			res.Success = false
			return res, ctx.Err()
		}
	}
	// The files it wrote are part of the answer: wait for their upload
	// (bounded by the upload timeout) before the session ends and cancels
	// it, then take in their announcement.
	if err := sess.WaitUpload(ctx, req.Header.MsgID); err == nil {
		msgs, _, _, _ := sess.Replay().Since(cursor, client, pollBatch)
		for _, e := range msgs {
			if e.Msg.ParentMsgID() == req.Header.MsgID && e.Msg.Header.MsgType == session.FilesMsgType {
				col.add(e.Msg)
			}
		}
	}
	return col.result(), nil
}

func (col *serviceCollector) result() serviceResult {
	res := serviceResult{
		Stdout: col.stdout.b.String(), Stderr: col.stderr.b.String(),
		Outputs: col.outputs, OutputsTruncated: col.outputsCut, Files: col.files,
	}
	if res.Outputs == nil {
		res.Outputs = []json.RawMessage{}
	}
	if res.Files == nil {
		res.Files = []session.FileLink{}
	}
	if col.reply != nil {
		res.ExecuteReply = col.reply.Content
		var reply jupytermsg.ExecuteReply
		_ = json.Unmarshal(col.reply.Content, &reply)
		res.Success = reply.Status == "ok"
		res.Permalink = permalink.FromReply(col.reply)
	}
	return res
}

// add takes in m and reports whether it is the final idle status.
func (col *serviceCollector) add(m *jupytermsg.Message) bool {
	switch m.Header.MsgType {
	case "stream":
		var st jupytermsg.Stream
		if m.DecodeContent(&st) == nil {
			if st.Name == "stderr" {
				col.stderr.add(st.Text)
			} else {
				col.stdout.add(st.Text)
			}
		}
	case "execute_reply":
		col.reply = m
	case "execute_result", "display_data", "error":
		out, _ := json.Marshal(map[string]any{"msg_type": m.Header.MsgType, "content": m.Content})
		if len(col.outputs) >= serviceMaxOutputs || col.outputBytes+len(out) > serviceMaxOutputBytes {
			col.outputsCut = true
		} else {
			col.outputs = append(col.outputs, out)
			col.outputBytes += len(out)
		}
		if m.Header.MsgType == "error" {
			var e jupytermsg.Error
			if m.DecodeContent(&e) == nil {
				col.stderr.add(e.EName + ": " + e.EValue + "\n")
			}
		}
	case session.FilesMsgType:
		var announced struct {
			Files []session.FileLink `json:"files"`
		}
		if m.DecodeContent(&announced) == nil && len(col.files) < serviceMaxOutputs {
			col.files = append(col.files, announced.Files[:min(len(announced.Files), serviceMaxOutputs-len(col.files))]...)
		}
	case "status":
		var st jupytermsg.Status
		return m.DecodeContent(&st) == nil && st.ExecutionState == jupytermsg.StateIdle
	}
	return false
}
