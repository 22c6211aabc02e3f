package gateway

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"
)

// refuseForeignOrigins refuses, with 403, a request that changes state on
// behalf of a browser page whose origin --allow-origin does not allow.
// CORS alone does not stop it: a browser sends a form POST (or a GET)
// without asking first, and only hides the answer from the page, so a
// hostile page could start kernels, run /service, keep sessions alive or
// end them with its visitors' addresses and quotas. Requests without an
// Origin (scripts, apps, curl, Jupyter's own gateway client) are not
// browser pages acting for someone else, and pass.
//
// State-changing means every method but GET, HEAD and OPTIONS (preflights
// are the CORS middleware's), and the GETs that act on a session: the
// long-poll (it keeps the session attached and moves its cursor) and the
// websocket upgrades (which the upgrader checks too).
func (s *Server) refuseForeignOrigins(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if !changesState(r.Method, c.Path()) || s.originAllowed(r) {
			return next(c)
		}
		return httpError(c, http.StatusForbidden, fmt.Sprintf("origin %q may not use this server (--allow-origin)", r.Header.Get("Origin")))
	}
}

// sessionGETs are the GET routes that act on a session.
var sessionGETs = map[string]bool{
	"/kernel/:id/poll":          true,
	"/kernel/:id/channels":      true,
	"/api/kernels/:id/channels": true,
}

// changesState says whether a request to route (echo's path pattern)
// with method changes something on the server.
func changesState(method, route string) bool {
	switch method {
	case http.MethodGet, http.MethodHead:
		return sessionGETs[route]
	case http.MethodOptions:
		return false
	}
	return true
}
