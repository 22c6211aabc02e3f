package gateway

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
)

// The Sage Cell Server API: POST /kernel, DELETE /kernel/{id}, the
// interrupt, and the kernel's websocket. Long-polling (poll.go), /service
// (service.go), permalinks (permalinks.go) and files (files.go) are the
// rest of it.

// maxClientIDBytes bounds the client key the per-client cap counts by.
const maxClientIDBytes = 256

// sageSession is the Sage-cell session a route names.
func (s *Server) sageSession(c echo.Context) *session.Session {
	id, err := pathParam(c, "id")
	if err != nil {
		return nil
	}
	return s.sessions.getAPI(id, session.SageCell)
}

// createSageKernel is POST /kernel: lease a kernel for a Sage-cell client.
// As the Sage cell: method=OPTIONS (for clients that cannot send OPTIONS)
// only answers, frame=on answers with a page that posts the result to its
// parent, timeout=inf asks for the longest idle timeout allowed, and
// CellSessionID limits the kernels one page (cell session) holds at once.
func (s *Server) createSageKernel(c echo.Context) error {
	raw := s.keepBody(c)
	body, err := formOrJSON(c)
	if err != nil {
		return s.sageError(c, http.StatusBadRequest, err.Error())
	}
	switch method := strings.ToUpper(param(c, body, "method")); method {
	case http.MethodOptions:
		if framed(c) {
			return framePage(c, http.StatusOK, nil)
		}
		return c.NoContent(http.StatusOK)
	case http.MethodDelete:
		return s.sageError(c, http.StatusBadRequest, "method=DELETE needs the kernel: POST /kernel/{id}")
	}
	life := session.Lifetime{MaxIdle: s.cfg.MaxTimeout, Lifespan: s.cfg.MaxLifespan}
	timeout := time.Duration(0)
	if v := param(c, body, "timeout"); v != "" {
		if timeout, err = s.sageTimeout(v); err != nil {
			return s.sageError(c, http.StatusBadRequest, err.Error())
		}
	}
	if timeout == 0 {
		life.OneShot, life.Idle = true, s.cfg.OneShotGrace
	} else {
		life.Idle = timeout
	}
	choice, err := s.resolveSageChoice(askedKernel(c, body))
	if err != nil {
		return s.sageError(c, http.StatusBadRequest, err.Error())
	}
	clientKey := param(c, body, "client_id")
	if len(clientKey) > maxClientIDBytes {
		return s.sageError(c, http.StatusBadRequest, fmt.Sprintf("client_id longer than %d bytes", maxClientIDBytes))
	}
	cellSession := param(c, body, "CellSessionID")
	if len(cellSession) > maxClientIDBytes {
		return s.sageError(c, http.StatusBadRequest, fmt.Sprintf("CellSessionID longer than %d bytes", maxClientIDBytes))
	}
	if s.placeElsewhere(c, choice.Kernel, raw) {
		return nil
	}
	releaseCell, ok := s.cellSessions.reserve(cellSession)
	if !ok {
		return s.sageAnswer(c, http.StatusTooManyRequests, apiError{Error: tooManyForCellSession, Message: tooManyForCellSessionMessage})
	}
	sess, err := s.startSession(c.Request().Context(), choice, session.SageCell, c.RealIP(), clientKey, s.baseURL(c).String(), life)
	if err != nil {
		releaseCell()
		if code := statusOf(err, http.StatusInternalServerError); code != http.StatusInternalServerError && framed(c) {
			return s.sageError(c, code, err.Error())
		}
		return answerError(c, err)
	}
	s.cellSessions.releaseWhenEnded(sess, releaseCell)
	c.Response().Header().Set("Jupyter-Kernel-ID", sess.ID())
	return s.sageAnswer(c, http.StatusOK, map[string]string{"id": sess.ID(), "ws_url": s.wsURL(c), "kernel_name": choice.Kernel, "language": cmp.Or(choice.Language, choice.Kernel)})
}

// What the Sage cell answers a page over its cell-session limit.
const (
	tooManyForCellSession        = "too_many_kernels_for_cell_session"
	tooManyForCellSessionMessage = "This page requested too many simultaneous kernels. Please wait for existing computations to finish, reload the page, or contact the author of this page for assistance."
)

// sageTimeout reads a Sage-cell timeout: seconds, where anything above the
// cap ("inf", which the Sage cell's linked cells send, included) is the cap.
func (s *Server) sageTimeout(v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if errors.Is(err, strconv.ErrRange) && f > 0 {
		err = nil // larger than a float: the cap
	}
	if err != nil || math.IsNaN(f) || f < 0 {
		return 0, fmt.Errorf("invalid number of seconds %q", v)
	}
	if f >= s.cfg.MaxTimeout.Seconds() {
		return s.cfg.MaxTimeout, nil
	}
	return time.Duration(f * float64(time.Second)), nil
}

// sageAnswer answers data as JSON, or as the Sage cell's frame page when
// the request asks for one (frame=on).
func (s *Server) sageAnswer(c echo.Context, code int, data any) error {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if c.Response().Header().Get("Retry-After") == "" {
			c.Response().Header().Set("Retry-After", "5")
		}
	}
	if framed(c) {
		return framePage(c, code, data)
	}
	return c.JSON(code, data)
}

// sageError answers an error in the JSON error shape, framed if asked.
func (s *Server) sageError(c echo.Context, code int, message string) error {
	if !framed(c) {
		return httpError(c, code, message)
	}
	return s.sageAnswer(c, code, apiError{Error: http.StatusText(code), Message: message})
}

// sageDefaultKernel is the kernel the Sage-cell routes run when a request
// names none: SageCellDefaultKernel if set, else the SageMath kernel when
// one is installed (the Sage cell's scripts name no language and expect
// Sage), else DefaultKernel.
func (s *Server) sageDefaultKernel() string {
	if s.cfg.SageCellDefaultKernel != "" {
		return s.cfg.SageCellDefaultKernel
	}
	if sage := s.sageKernel(); sage != "" {
		return sage
	}
	return s.cfg.DefaultKernel
}

// resolveSageKernel is resolveKernel with the Sage-cell routes' default.
func (s *Server) resolveSageKernel(asked string) (string, error) {
	if asked == "" {
		return s.sageDefaultKernel(), nil
	}
	return s.resolveKernel(asked)
}

// deleteSageKernel is DELETE /kernel/{id}, or POST with method=DELETE for
// clients that cannot send DELETE.
func (s *Server) deleteSageKernel(c echo.Context) error {
	if c.Request().Method == http.MethodPost && !strings.EqualFold(c.FormValue("method"), http.MethodDelete) {
		return httpError(c, http.StatusMethodNotAllowed, "POST /kernel/{id} needs method=DELETE")
	}
	sess := s.sageSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	sess.End(session.EndDeleted)
	return c.NoContent(http.StatusNoContent)
}

// sageChannels is the Sage-cell websocket: JSON text frames with a
// top-level channel; outgoing frames also carry their sequence number.
func (s *Server) sageChannels(c echo.Context) error {
	sess := s.sageSession(c)
	if sess == nil {
		return s.endedChannels(c, session.SageCell, sageCodec{})
	}
	return s.bridge(c, sess, sageCodec{})
}

// interruptSageKernel is POST /kernel/{id}/interrupt: the cell's stop
// button. Kernels with signal interrupts cannot be reached by a message.
func (s *Server) interruptSageKernel(c echo.Context) error {
	return interrupt(c, s.sageSession(c))
}

// interrupt answers an interrupt request for sess (nil: unknown kernel).
func interrupt(c echo.Context, sess *session.Session) error {
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	if err := sess.Kernel().Interrupt(); err != nil {
		return httpError(c, http.StatusConflict, err.Error())
	}
	sess.Touch()
	return c.NoContent(http.StatusNoContent)
}
