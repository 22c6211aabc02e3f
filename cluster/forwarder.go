package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/rs/zerolog"
)

// Why Forward did not forward. In both cases nothing has been written to the response: the
// caller answers.
var (
	// ErrLoop: the request was itself forwarded (or claims to be), or the target is this
	// instance. A forwarded request is served where it lands, whatever the outcome: two
	// instances with different views of an owner must not bounce it between them.
	ErrLoop = errors.New("cluster: request must not be forwarded again")
	// ErrUnreachable: the target could not be reached or failed before answering (e.g. it
	// died). Check the owner again (Registry.Owner confirms a death) before answering.
	ErrUnreachable = errors.New("cluster: instance unreachable")
)

// ForwarderConfig configures a Forwarder.
type ForwarderConfig struct {
	// Secret is the cluster secret, the same on every instance; at least MinSecretBytes.
	Secret []byte
	// InstanceID is this instance's id, signed as the forwarder.
	InstanceID string
	// Now is the clock the timestamps are signed with: give Registry.Now. Default time.Now.
	Now func() time.Time
	// DialTimeout bounds connecting to another instance, so that a request for a dead owner
	// fails fast. Default 2 s.
	DialTimeout time.Duration
	// Transport overrides the HTTP transport (tests); nil makes one of its own.
	Transport http.RoundTripper
	Log       zerolog.Logger
}

// Forwarder forwards requests to other instances: plain HTTP, held long-polls (flushed as they
// come) and websocket upgrades (bytes relayed both ways until either side closes), signed with
// the cluster secret.
type Forwarder struct {
	key   []byte
	self  string
	now   func() time.Time
	proxy *httputil.ReverseProxy
	log   zerolog.Logger
	own   *http.Transport // the transport it made, closed by Close
	// dialTimeout bounds connecting to another instance (DialWebsocket's handshake too).
	dialTimeout time.Duration
}

// forwardCall is one Forward's target and outcome, carried through the proxy in the request's
// context (the proxy is shared by all calls).
type forwardCall struct {
	to     Instance
	client string
	err    error
}

type callKey struct{}

// NewForwarder checks cfg and makes a Forwarder.
func NewForwarder(cfg ForwarderConfig) (*Forwarder, error) {
	key, err := signingKey(cfg.Secret)
	if err != nil {
		return nil, err
	}
	if err := checkInstanceID(cfg.InstanceID); err != nil {
		return nil, err
	}
	fill(&cfg.DialTimeout, 2*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Forwarder{key: key, self: cfg.InstanceID, now: cfg.Now, log: cfg.Log.With().Str("component", "cluster").Logger(), dialTimeout: cfg.DialTimeout}
	transport := cfg.Transport
	if transport == nil {
		f.own = &http.Transport{
			// Instances reach each other directly: an environment's HTTP proxy is not for them.
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   cfg.DialTimeout,
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			ExpectContinueTimeout: time.Second,
			// No ResponseHeaderTimeout: a long-poll is held for as long as the owner decides;
			// the client's own request context ends the wait.
		}
		transport = f.own
	}
	f.proxy = &httputil.ReverseProxy{
		Rewrite:       f.rewrite,
		Transport:     transport,
		FlushInterval: -1, // long-poll answers and streamed bodies go out as they come
		ErrorHandler:  f.failed,
		ErrorLog:      log.New(f.log, "", 0),
	}
	return f, nil
}

// Forward forwards r to instance to, as sent by the client at address client (an IP address, as
// the caps count it; anything else is sent as unknown), and writes the answer to w. It returns
// ErrLoop or ErrUnreachable (wrapped) with nothing written; once the target has answered, the
// answer is the caller's and Forward returns nil (a connection cut mid-answer aborts the
// handler, as net/http does for any proxy). Call it before anything reads r.Body.
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, to Instance, client string) error {
	if _, ok := ForwardedFrom(r.Context()); ok || len(r.Header.Values(HeaderName)) > 0 {
		return fmt.Errorf("%w: it came from another instance", ErrLoop)
	}
	if to.ID == f.self {
		return fmt.Errorf("%w: the target is this instance", ErrLoop)
	}
	target, err := parseAdvertiseURL(to.URL)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	to.URL = target.String()
	call := &forwardCall{to: to, client: clientAddr(client)}
	f.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, call)))
	return call.err
}

// rewrite makes the request sent to the target.
func (f *Forwarder) rewrite(pr *httputil.ProxyRequest) {
	call := pr.In.Context().Value(callKey{}).(*forwardCall)
	target, _ := parseAdvertiseURL(call.to.URL) // checked by Forward
	pr.SetURL(target)
	// The client's Host, not the target's: the owner builds ws_url and file links from it, and
	// they must lead the client back through the balancer. Likewise the scheme it was reached by.
	pr.Out.Host = pr.In.Host
	proto := "http"
	if pr.In.TLS != nil {
		proto = "https"
	} else if p := pr.In.Header.Get("X-Forwarded-Proto"); p == "https" || p == "http" {
		proto = p
	}
	pr.Out.Header.Set("X-Forwarded-Proto", proto)
	pr.Out.Header.Set("X-Forwarded-Host", pr.In.Host)
	// For logs and for a receiver configured to read it (the proxy removed the client's own); the
	// signed header is what vouches.
	if call.client != "" {
		pr.Out.Header.Set("X-Forwarded-For", call.client)
	}
	s := stamp{unix: f.now().Unix(), nonce: newNonce(), from: f.self, to: call.to.ID, client: call.client}
	pr.Out.Header.Set(HeaderName, s.header(f.key, pr.Out.Method, requestURI(pr.Out)))
}

// failed records why the target could not answer, writing nothing: Forward's caller answers.
func (f *Forwarder) failed(_ http.ResponseWriter, r *http.Request, err error) {
	call := r.Context().Value(callKey{}).(*forwardCall)
	call.err = fmt.Errorf("%w: %s at %s: %w", ErrUnreachable, call.to.ID, call.to.URL, err)
	f.log.Debug().Err(err).Str("to", call.to.ID).Str("path", r.URL.Path).Msg("cluster: forwarding failed")
}

// Close closes the idle connections of the transport the Forwarder made.
func (f *Forwarder) Close() {
	if f.own != nil {
		f.own.CloseIdleConnections()
	}
}
