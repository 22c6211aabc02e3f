package gateway

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/kernelpool"
)

// apiError is the JSON body of every error answer.
type apiError struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

// httpError answers with a JSON error and, for capacity errors, Retry-After
// (5 s unless the caller set it).
func httpError(c echo.Context, code int, message string) error {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if c.Response().Header().Get("Retry-After") == "" {
			c.Response().Header().Set("Retry-After", "5")
		}
	}
	return c.JSON(code, apiError{Error: http.StatusText(code), Message: message})
}

// statusOf is the one table from the errors a request can meet to the
// status it answers; otherwise is the status of any other error.
func statusOf(err error, otherwise int) int {
	switch {
	case errors.Is(err, errClientCap), errors.Is(err, errKernelNotebooks):
		return http.StatusTooManyRequests
	case errors.Is(err, errCapacity), errors.Is(err, errDraining), errors.Is(err, errTooManyNotebooks):
		return http.StatusServiceUnavailable
	case errors.Is(err, kernelpool.ErrUnknownKernel):
		return http.StatusBadRequest
	case errors.Is(err, session.ErrEnded):
		return http.StatusGone
	}
	return otherwise
}

// answerError answers an error the table knows; any other is the server's
// own and goes to the error handler.
func answerError(c echo.Context, err error) error {
	if code := statusOf(err, http.StatusInternalServerError); code != http.StatusInternalServerError {
		// An error that knows when to come back (the kernel queue's
		// estimate) says so.
		var later interface{ RetryAfter() time.Duration }
		if errors.As(err, &later) {
			c.Response().Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(later.RetryAfter().Seconds()))))
		}
		return httpError(c, code, err.Error())
	}
	return err
}

// errorHandler turns echo's own errors (404 routes, bad methods, body too
// large) into the JSON error shape. Any other error is the server's own:
// it is logged once, here, and the client gets an id to quote instead of
// the internal text.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var he *echo.HTTPError
	if errors.As(err, &he) && he.Code != http.StatusInternalServerError {
		_ = httpError(c, he.Code, fmt.Sprint(he.Message))
		return
	}
	id := c.Response().Header().Get(echo.HeaderXRequestID)
	if id == "" {
		id = uuid.NewString()
	}
	s.log.Error().Err(err).Str("path", c.Path()).Str("request_id", id).Msg("request failed")
	_ = c.JSON(http.StatusInternalServerError, apiError{
		Error: http.StatusText(http.StatusInternalServerError), Message: "internal error", RequestID: id,
	})
}
