package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"

	"github.com/labstack/echo/v4"
)

// What pages written for the Sage Cell Server ask of it besides kernels:
// the terms-of-service check, JSONP answers, and answers to hidden iframes
// (frame=on) by postMessage.

// maxCallbackBytes bounds a JSONP callback name.
const maxCallbackBytes = 128

// callbackName is a JSONP callback: a dotted JavaScript identifier, and
// nothing that could add script of the caller's choosing to the answer.
var callbackName = regexp.MustCompile(`^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$`)

// jsonpCallback is the request's JSONP callback ("" if it asks none), or an
// error if the name is not one.
func jsonpCallback(c echo.Context) (string, error) {
	cb := c.QueryParam("callback")
	if cb == "" {
		cb = c.FormValue("callback")
	}
	if cb == "" {
		return "", nil
	}
	if len(cb) > maxCallbackBytes || !callbackName.MatchString(cb) {
		return "", fmt.Errorf("callback must be a JavaScript name (letters, digits, _, $ and dots, at most %d bytes)", maxCallbackBytes)
	}
	return cb, nil
}

// jsonp answers callback(arg); arg is JSON. The leading comment keeps the
// answer from being read as anything but script (as other JSONP servers do).
func jsonp(c echo.Context, callback string, arg any) error {
	b, err := json.Marshal(arg)
	if err != nil {
		return fmt.Errorf("jsonp answer: %w", err)
	}
	c.Response().Header().Set("X-Content-Type-Options", "nosniff")
	return c.Blob(http.StatusOK, "application/javascript; charset=utf-8", []byte("/**/"+callback+"("+string(b)+");"))
}

// framed reports whether the request asks for the answer as a page that
// posts it to its parent (the Sage cell's frame=on, for pages that cannot
// read cross-origin answers).
func framed(c echo.Context) bool {
	_, inQuery := c.QueryParams()["frame"]
	if inQuery {
		return true
	}
	if form, err := c.FormParams(); err == nil {
		_, inForm := form["frame"]
		return inForm
	}
	return false
}

// framePage answers data as the Sage cell does to frame=on: an HTML page
// whose script posts the JSON text of data to its parent. The JSON is
// escaped for HTML (no "<", ">" or "&" survive), so nothing in it can close
// the script.
func framePage(c echo.Context, code int, data any) error {
	text, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("frame answer: %w", err)
	}
	// The message is the JSON text, as a JavaScript string.
	literal, err := json.Marshal(string(text))
	if err != nil {
		return fmt.Errorf("frame answer: %w", err)
	}
	return c.HTML(code, `<script>parent.postMessage(`+string(literal)+`,"*");</script>`)
}

// tos is POST /tos.html, which the Sage cell's front end asks before its
// first evaluation: no terms of service need accepting here, so 204, or
// for JSONP an empty string (the Sage cell's "no terms" answer).
func (s *Server) tos(c echo.Context) error {
	if c.Request().Method != http.MethodPost {
		return httpError(c, http.StatusNotFound, "No Terms of Service Required")
	}
	cb, err := jsonpCallback(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	if cb != "" {
		return jsonp(c, cb, "")
	}
	return c.NoContent(http.StatusNoContent)
}
