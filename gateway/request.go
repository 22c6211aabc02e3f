package gateway

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

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

// codeRequest reads a request that carries code (/service, /permalink).
func codeRequest(c echo.Context) (body map[string]any, code string, err error) {
	if body, err = formOrJSON(c); err != nil {
		return nil, "", err
	}
	if code = param(c, body, "code"); code == "" {
		return nil, "", errors.New("missing code")
	}
	return body, code, nil
}

// askedKernel is the kernel a Sage-cell request names, by kernelspec or
// by language.
func askedKernel(c echo.Context, body map[string]any) string {
	if asked := param(c, body, "kernel_name"); asked != "" {
		return asked
	}
	return param(c, body, "language")
}

// pathParam returns a path parameter decoded exactly once. echo matches
// on the raw path when the request has one (then parameters are still
// escaped), and on the decoded path otherwise.
func pathParam(c echo.Context, name string) (string, error) {
	v := c.Param(name)
	if c.Request().URL.RawPath == "" {
		return v, nil
	}
	u, err := url.PathUnescape(v)
	if err != nil {
		return "", fmt.Errorf("path parameter %s: %w", name, err)
	}
	return u, nil
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

// parseSeconds reads a duration given in (fractional) seconds.
func parseSeconds(v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 1e9 {
		return 0, fmt.Errorf("invalid number of seconds %q", v)
	}
	return time.Duration(f * float64(time.Second)), nil
}
