package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// maxClientIDBytes bounds the client key the per-client cap counts by.
const maxClientIDBytes = 256

func humanBytes(n int64) string { return strconv.FormatInt(n, 10) }

func sameHost(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host == host
}

// param reads a form, query or JSON-body field. Sage-cell clients send
// forms; apps often send JSON.
func param(c echo.Context, body map[string]any, name string) string {
	if v, ok := body[name]; ok {
		switch t := v.(type) {
		case string:
			return t
		case float64:
			return strconv.FormatFloat(t, 'f', -1, 64)
		case bool:
			return strconv.FormatBool(t)
		}
	}
	return c.FormValue(name)
}

// formOrJSON parses a JSON body when the request has one, and checks that
// a form body parses: a form the server cannot read would otherwise look
// like one without the field ("missing code"), which misleads whoever
// typed `curl -d 'code=a; b'` (a raw ';' is not a form separator any more).
func formOrJSON(c echo.Context) (map[string]any, error) {
	body := map[string]any{}
	contentType := c.Request().Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(contentType, "application/json"):
		if err := c.Bind(&body); err != nil {
			return nil, fmt.Errorf("invalid JSON body: %w", err)
		}
	case strings.HasPrefix(contentType, "application/x-www-form-urlencoded"):
		if err := c.Request().ParseForm(); err != nil {
			return nil, fmt.Errorf("invalid form body (URL-encode the values, e.g. curl --data-urlencode code@file.py): %w", err)
		}
	}
	return body, nil
}

// baseURL is where clients reach this server, for ws_url and file links.
// It always ends with a slash, added here alone: links are the base plus a
// relative path ("files/…").
func (s *Server) baseURL(c echo.Context) *url.URL {
	if s.cfg.PublicURL != "" {
		if u, err := url.Parse(s.cfg.PublicURL); err == nil && u.Host != "" {
			if !strings.HasSuffix(u.Path, "/") {
				u.Path += "/"
			}
			return u
		}
	}
	return &url.URL{Scheme: c.Scheme(), Host: c.Request().Host, Path: "/"}
}

func (s *Server) wsURL(c echo.Context) string {
	u := *s.baseURL(c)
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	return u.String()
}

// createSageKernel is POST /kernel: lease a kernel for a Sage-cell client.
func (s *Server) createSageKernel(c echo.Context) error {
	body, err := formOrJSON(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	life := lifetime{maxIdle: s.cfg.MaxTimeout, lifespan: s.cfg.MaxLifespan}
	timeout := time.Duration(0)
	if v := param(c, body, "timeout"); v != "" {
		if timeout, err = parseSeconds(v); err != nil {
			return httpError(c, http.StatusBadRequest, err.Error())
		}
	}
	if timeout == 0 {
		life.oneShot, life.idle = true, s.cfg.OneShotGrace
	} else {
		life.idle = min(timeout, s.cfg.MaxTimeout)
	}
	asked := param(c, body, "kernel_name")
	if asked == "" {
		asked = param(c, body, "language")
	}
	spec, err := s.resolveKernel(asked)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	owner := param(c, body, "client_id")
	if len(owner) > maxClientIDBytes {
		return httpError(c, http.StatusBadRequest, fmt.Sprintf("client_id longer than %d bytes", maxClientIDBytes))
	}
	sess, err := s.startSession(c.Request().Context(), spec, sageCellAPI, c.RealIP(), owner, s.baseURL(c).String(), life)
	if err != nil {
		return sessionError(c, err)
	}
	c.Response().Header().Set("Jupyter-Kernel-ID", sess.id)
	return c.JSON(http.StatusOK, map[string]string{"id": sess.id, "ws_url": s.wsURL(c), "kernel_name": spec})
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
	sess.end(endDeleted)
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
func interrupt(c echo.Context, sess *session) error {
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	if err := sess.kernel.Interrupt(); err != nil {
		return httpError(c, http.StatusConflict, err.Error())
	}
	sess.touch()
	return c.NoContent(http.StatusNoContent)
}
