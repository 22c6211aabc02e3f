package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
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
	// CheckAfter is how long a forwarded call (an answer not yet complete, a websocket relayed)
	// runs before the Forwarder starts checking that its target still answers at all, and then
	// how often it checks again. A process that is paused (SIGSTOP, a long stall) or cut off
	// without a reset still has its connections open, and the kernel still accepts new ones for
	// it, so neither the dial timeout nor the connection notices; and no timeout on the answer
	// itself can be short, as an owner holds a long-poll or a /service computation for as long as
	// it needs. A target that leaves a check (GET /healthz, answered by any instance that runs)
	// without any answer for CheckTimeout has its calls ended: Forward returns ErrUnreachable
	// when nothing was written yet, and otherwise the client's connection is cut. A call to a
	// stalled instance therefore ends within about CheckAfter + CheckTimeout (each call then
	// waits at most CheckAfter, as the check's verdict is shared for CheckAfter by every call to
	// that instance). Default 5 s.
	CheckAfter time.Duration
	// CheckTimeout is how long a check waits for the target's answer. Default 5 s.
	CheckTimeout time.Duration
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
	transport   http.RoundTripper
	checkAfter  time.Duration
	checkTO     time.Duration
	checksMu    sync.Mutex
	// checks holds the latest check of each target, by its URL: one entry per instance ever
	// forwarded to (a handful), kept so that calls share a verdict.
	checks map[string]*targetCheck
}

// targetCheck is the latest check of whether a target answers: its verdict and when it was
// given, or the check under way.
type targetCheck struct {
	answered bool
	at       time.Time
	err      error
	running  chan struct{} // closed when the check under way ends; nil when none is
}

// errStalled ends the calls to a target that answered neither them nor a check.
var errStalled = errors.New("it answered no check: stalled or cut off")

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
	fill(&cfg.CheckAfter, 5*time.Second)
	fill(&cfg.CheckTimeout, 5*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Forwarder{key: key, self: cfg.InstanceID, now: cfg.Now, log: cfg.Log.With().Str("component", "cluster").Logger(), dialTimeout: cfg.DialTimeout,
		checkAfter: cfg.CheckAfter, checkTO: cfg.CheckTimeout, checks: map[string]*targetCheck{}}
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
			// the client's own request context ends the wait, and so does a target that answers
			// no check (CheckAfter).
		}
		transport = f.own
	}
	f.transport = transport
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
	ctx, cancel := context.WithCancelCause(context.WithValue(r.Context(), callKey{}, call))
	defer cancel(nil)
	go f.watch(ctx, target, cancel)
	f.proxy.ServeHTTP(w, r.WithContext(ctx))
	return call.err
}

// watch ends a call (cancel) once its target answers no check, until ctx ends with the call.
// The proxy then fails the call (nothing written yet) or cuts the client's connection (an
// answer or a websocket under way: the proxy closes the target's side, and the client's).
func (f *Forwarder) watch(ctx context.Context, target *url.URL, cancel context.CancelCauseFunc) {
	t := time.NewTimer(f.checkAfter)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := f.answers(ctx, target); err != nil {
			cancel(fmt.Errorf("%w: %w", errStalled, err))
			return
		}
		t.Reset(f.checkAfter)
	}
}

// watchedConn is a connection of this instance's own to another (DialWebsocket's), closed by
// the Forwarder once that instance answers no check, as a forwarded call would be ended.
type watchedConn struct {
	net.Conn
	stop context.CancelCauseFunc
}

func (c *watchedConn) Close() error {
	c.stop(nil)
	return c.Conn.Close()
}

// watchConn watches conn's target (watch) for as long as conn is open, closing conn if the
// target stalls: whoever reads it then learns that it ended instead of waiting for ever.
func (f *Forwarder) watchConn(conn net.Conn, target *url.URL) net.Conn {
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		f.watch(ctx, target, cancel)
		if errors.Is(context.Cause(ctx), errStalled) {
			_ = conn.Close()
		}
	}()
	return &watchedConn{Conn: conn, stop: cancel}
}

// answers checks that target answers at all (GET healthz under it, any status): nil if it did,
// within CheckAfter (the shared verdict) or now; else why not. Calls to one target share one
// check at a time and its verdict for CheckAfter.
func (f *Forwarder) answers(ctx context.Context, target *url.URL) error {
	key := target.String()
	f.checksMu.Lock()
	c := f.checks[key]
	if c == nil {
		c = &targetCheck{}
		f.checks[key] = c
	}
	if c.running == nil && !c.at.IsZero() && time.Since(c.at) < f.checkAfter {
		err := c.err
		f.checksMu.Unlock()
		return err
	}
	if c.running == nil {
		c.running = make(chan struct{})
		go f.check(target, c)
	}
	running := c.running
	f.checksMu.Unlock()
	select {
	case <-running:
	case <-ctx.Done():
		return nil // the call is over: nothing to end
	}
	f.checksMu.Lock()
	defer f.checksMu.Unlock()
	return c.err
}

// check asks target for healthz and records the verdict in c.
func (f *Forwarder) check(target *url.URL, c *targetCheck) {
	ctx, cancel := context.WithTimeout(context.Background(), f.checkTO)
	defer cancel()
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target.JoinPath("healthz").String(), nil)
		if err != nil {
			return err
		}
		resp, err := f.transport.RoundTrip(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}()
	if err != nil {
		f.log.Warn().Err(err).Str("to", target.String()).Dur("check_timeout", f.checkTO).
			Msg("cluster: an instance answered no check; ending the calls forwarded to it")
	}
	f.checksMu.Lock()
	defer f.checksMu.Unlock()
	c.err, c.at = err, time.Now()
	close(c.running)
	c.running = nil
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
	if cause := context.Cause(r.Context()); errors.Is(cause, errStalled) {
		err = cause
	}
	call.err = fmt.Errorf("%w: %s at %s: %w", ErrUnreachable, call.to.ID, call.to.URL, err)
	f.log.Debug().Err(err).Str("to", call.to.ID).Str("path", r.URL.Path).Msg("cluster: forwarding failed")
}

// Close closes the idle connections of the transport the Forwarder made.
func (f *Forwarder) Close() {
	if f.own != nil {
		f.own.CloseIdleConnections()
	}
}
