package gateway

import (
	"fmt"
	"net/http"
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
func (s *Server) createSageKernel(c echo.Context) error {
	body, err := formOrJSON(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	life := session.Lifetime{MaxIdle: s.cfg.MaxTimeout, Lifespan: s.cfg.MaxLifespan}
	timeout := time.Duration(0)
	if v := param(c, body, "timeout"); v != "" {
		if timeout, err = parseSeconds(v); err != nil {
			return httpError(c, http.StatusBadRequest, err.Error())
		}
	}
	if timeout == 0 {
		life.OneShot, life.Idle = true, s.cfg.OneShotGrace
	} else {
		life.Idle = min(timeout, s.cfg.MaxTimeout)
	}
	kernelName, err := s.resolveKernel(askedKernel(c, body))
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	clientKey := param(c, body, "client_id")
	if len(clientKey) > maxClientIDBytes {
		return httpError(c, http.StatusBadRequest, fmt.Sprintf("client_id longer than %d bytes", maxClientIDBytes))
	}
	sess, err := s.startSession(c.Request().Context(), kernelName, session.SageCell, c.RealIP(), clientKey, s.baseURL(c).String(), life)
	if err != nil {
		return answerError(c, err)
	}
	c.Response().Header().Set("Jupyter-Kernel-ID", sess.ID())
	return c.JSON(http.StatusOK, map[string]string{"id": sess.ID(), "ws_url": s.wsURL(c), "kernel_name": kernelName})
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
		return httpError(c, http.StatusNotFound, "no such kernel")
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
