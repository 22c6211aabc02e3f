package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"
)

// DialWebsocket opens a websocket to the request URI uri (path and query) on instance to, for
// the client at address client who reached this instance at host, signed as Forward signs a
// request. It is for a transport that cannot be forwarded whole: SockJS carries several
// kernels on one connection, so each kernel owned elsewhere is bridged over a websocket of its
// own. Errors wrap ErrLoop or ErrUnreachable, as Forward's; an answer other than the upgrade
// (the owner refused: the session ended) is ErrUnreachable too, with its status.
func (f *Forwarder) DialWebsocket(ctx context.Context, to Instance, uri, host, client string) (*websocket.Conn, error) {
	if to.ID == f.self {
		return nil, fmt.Errorf("%w: the target is this instance", ErrLoop)
	}
	target, err := parseAdvertiseURL(to.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	rel, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	u := target.ResolveReference(rel)
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	client = clientAddr(client)
	s := stamp{unix: f.now().Unix(), nonce: newNonce(), from: f.self, to: to.ID, client: client}
	h := http.Header{HeaderName: {s.header(f.key, http.MethodGet, u.EscapedPath()+"?"+u.RawQuery)},
		"X-Forwarded-Host": {host}, "Host": {host}}
	if client != "" {
		h.Set("X-Forwarded-For", client)
	}
	dialer := &net.Dialer{Timeout: f.dialTimeout, KeepAlive: 30 * time.Second}
	d := websocket.Dialer{
		// The connection is watched as a forwarded call is: a bridge to an owner that stalls
		// is closed rather than left silent.
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return f.watchConn(conn, target), nil
		},
		HandshakeTimeout: f.dialTimeout,
		Proxy:            nil, // instances reach each other directly
	}
	conn, resp, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w: %s answered %d to %s", ErrUnreachable, to.ID, resp.StatusCode, u.Path)
		}
		return nil, fmt.Errorf("%w: %s at %s: %w", ErrUnreachable, to.ID, to.URL, err)
	}
	return conn, nil
}
