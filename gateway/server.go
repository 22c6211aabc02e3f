// Package gateway serves cellgate's HTTP APIs: the Sage Cell Server API,
// the Jupyter Server kernel API, websockets and long-polling, on top of a
// kernel pool.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// Pool is what the gateway needs from the kernel pool.
type Pool interface {
	Lease(ctx context.Context, name string) (*kernelpool.Kernel, error)
	Specs() map[string]jupytermsg.Spec
	Warm() bool
	Stats() []kernelpool.Stats
}

// Config configures the gateway. Zero values take the defaults in
// applyDefaults.
type Config struct {
	// PublicURL is the base that ws_url and file URLs are built from
	// (e.g. https://cells.example.org/); empty derives it from requests.
	// A missing trailing slash is added.
	PublicURL string
	// AllowOrigins lists origins allowed to embed cells; "*" allows all.
	AllowOrigins []string
	// Token protects the Jupyter Server API; empty disables auth there.
	Token string
	// TrustProxy takes client addresses from X-Forwarded-For.
	TrustProxy bool
	// DefaultKernel is used when a request names none.
	DefaultKernel string
	// MaxMessageBytes caps one incoming websocket frame or HTTP body.
	MaxMessageBytes int64
	// ReplayMessages and ReplayBytes bound each session's replay buffer.
	ReplayMessages int
	ReplayBytes    int
	// MaxTimeout caps the idle timeout a Sage-cell client may ask for
	// (and interacts may extend to); MaxLifespan caps any session.
	MaxTimeout  time.Duration
	MaxLifespan time.Duration
	// OneShotGrace ends a one-shot session nobody uses.
	OneShotGrace time.Duration
	// DetachGrace is how long a one-shot session that has computed
	// outlives its last client, so a websocket that drops and reconnects
	// (a network blip, a phone waking up) finds its cell and interacts
	// still there (default 10 s).
	DetachGrace time.Duration
	// JupyterIdleTimeout culls Jupyter-API kernels that are idle with no
	// client connected.
	JupyterIdleTimeout time.Duration
	// LeaseTimeout is how long a request waits for a kernel.
	LeaseTimeout time.Duration
	// MaxKernelsPerClient and MaxKernelsPerAddr cap sessions per client
	// key and per remote address.
	MaxKernelsPerClient int
	MaxKernelsPerAddr   int
	// MaxPendingExecutions bounds, per session, the executions waiting
	// for their reply whose permalink and files the gateway tracks
	// (default 256); later ones still run, with a notice.
	MaxPendingExecutions int
	// ServiceTimeout is the wall-clock limit of one /service computation.
	ServiceTimeout time.Duration
	// MaxCodeChars refuses longer /service code with 413 (default 65,000
	// characters, as the Sage Cell Server).
	MaxCodeChars int
	// PollWait is how long a long-poll GET is held open.
	PollWait time.Duration
	// PingInterval keeps websockets alive through proxies.
	PingInterval time.Duration
	// SandboxWarning is shown in /api status when kernels run unsandboxed.
	SandboxWarning string
	// Storage holds permalinks and kernel files; zero disables them.
	Storage Storage
	// Metrics receives the gateway's series; nil makes a set of its own.
	// Pass one made before the pool to record its first kernel starts.
	Metrics *Metrics
	Log     zerolog.Logger
}

func (c *Config) applyDefaults() {
	setDefault := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setDefault(&c.MaxTimeout, time.Hour)
	setDefault(&c.MaxLifespan, 4*time.Hour)
	setDefault(&c.OneShotGrace, time.Minute)
	setDefault(&c.DetachGrace, 10*time.Second)
	setDefault(&c.JupyterIdleTimeout, 30*time.Minute)
	setDefault(&c.LeaseTimeout, 10*time.Second)
	setDefault(&c.ServiceTimeout, 30*time.Second)
	setDefault(&c.PollWait, 25*time.Second)
	setDefault(&c.PingInterval, 30*time.Second)
	setDefault(&c.Storage.UploadTimeout, 10*time.Second)
	setDefault(&c.Storage.ReplyHold, 3*time.Second)
	if c.DefaultKernel == "" {
		c.DefaultKernel = "python3"
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 10 << 20
	}
	if c.ReplayMessages == 0 {
		c.ReplayMessages = 2000
	}
	if c.ReplayBytes == 0 {
		c.ReplayBytes = 16 << 20
	}
	if c.MaxKernelsPerClient == 0 {
		c.MaxKernelsPerClient = 4
	}
	if c.MaxKernelsPerAddr == 0 {
		c.MaxKernelsPerAddr = 16
	}
	if c.MaxPendingExecutions == 0 {
		c.MaxPendingExecutions = 256
	}
	if c.MaxCodeChars == 0 {
		c.MaxCodeChars = 65000
	}
	if len(c.AllowOrigins) == 0 {
		c.AllowOrigins = []string{"*"}
	}
}

// Server is the gateway.
type Server struct {
	cfg  Config
	pool Pool
	echo *echo.Echo
	log  zerolog.Logger

	started  time.Time
	nbs      notebookSessions
	metrics  *Metrics
	everWarm atomic.Bool

	mu       sync.Mutex
	sessions map[string]*session
	// perAddr and perOwner count live sessions and starts in progress,
	// for the per-client caps.
	perAddr  map[string]int
	perOwner map[string]int
	ended    tombstones
	draining bool
}

// New builds the gateway over pool.
func New(cfg Config, pool Pool) *Server {
	cfg.applyDefaults()
	s := &Server{cfg: cfg, pool: pool, log: cfg.Log, sessions: map[string]*session{},
		perAddr: map[string]int{}, perOwner: map[string]int{}, started: time.Now()}
	s.metrics = cfg.Metrics
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}
	s.metrics.register(s)
	s.echo = s.routes()
	return s
}

// Handler is the gateway's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// apiError is the JSON body of every error answer.
type apiError struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

// httpError answers with a JSON error and, for capacity errors, Retry-After.
func httpError(c echo.Context, code int, message string) error {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		c.Response().Header().Set("Retry-After", "5")
	}
	return c.JSON(code, apiError{Error: http.StatusText(code), Message: message})
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

// errCapacity and errClientCap are the reasons a session cannot start.
var (
	errCapacity  = errors.New("server at capacity")
	errClientCap = errors.New("too many kernels for this client")
	errDraining  = errors.New("server is shutting down")
)

// reserve takes a slot under the per-client caps before the (slow) lease,
// so that concurrent requests cannot all pass the check; release gives it
// back when the session does not start. Call release at most once: a
// session that starts gives its slot back through forget instead.
func (s *Server) reserve(remote, owner string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, errDraining
	}
	if n := s.perAddr[remote]; n >= s.cfg.MaxKernelsPerAddr {
		s.metrics.errors.WithLabelValues("client_cap").Inc()
		return nil, fmt.Errorf("%w: %d kernels for address %s", errClientCap, n, remote)
	}
	if n := s.perOwner[owner]; owner != "" && n >= s.cfg.MaxKernelsPerClient {
		s.metrics.errors.WithLabelValues("client_cap").Inc()
		return nil, fmt.Errorf("%w: %d kernels for client %s", errClientCap, n, owner)
	}
	s.perAddr[remote]++
	if owner != "" {
		s.perOwner[owner]++
	}
	return func() { s.mu.Lock(); s.unreserveLocked(remote, owner); s.mu.Unlock() }, nil
}

func (s *Server) unreserveLocked(remote, owner string) {
	if s.perAddr[remote]--; s.perAddr[remote] <= 0 {
		delete(s.perAddr, remote)
	}
	if owner == "" {
		return
	}
	if s.perOwner[owner]--; s.perOwner[owner] <= 0 {
		delete(s.perOwner, owner)
	}
}

// startSession leases a kernel and registers its session.
func (s *Server) startSession(ctx context.Context, spec, api, remote, owner, baseURL string, life lifetime) (*session, error) {
	release, err := s.reserve(remote, owner)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTimeout)
	defer cancel()
	began := time.Now()
	k, err := s.pool.Lease(ctx, spec)
	s.metrics.leaseWait.WithLabelValues(spec).Observe(time.Since(began).Seconds())
	if err != nil {
		release()
		s.metrics.errors.WithLabelValues("lease").Inc()
		if errors.Is(err, kernelpool.ErrNoKernel) || errors.Is(err, kernelpool.ErrPoolClosed) {
			return nil, fmt.Errorf("%w: %w", errCapacity, err)
		}
		return nil, fmt.Errorf("lease a %s kernel: %w", spec, err)
	}
	// A kernel handed out is proof the pool has warmed, whether or not
	// /readyz was asked meanwhile.
	s.everWarm.Store(true)
	sess := newSession(k, spec, api, remote, owner, life, &s.cfg, s.metrics)
	if api != jupyterAPI {
		sess.permalink = s.recordPermalink
		s.watchFiles(sess, baseURL)
	}
	// Every hook is in place before the session can end, so an end at any
	// point after start is forgotten and its slot given back.
	sess.onEnd = append(sess.onEnd, s.forget)
	s.mu.Lock()
	if s.draining {
		s.unreserveLocked(remote, owner)
		s.mu.Unlock()
		sess.discard()
		return nil, errDraining
	}
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	s.metrics.sessions.WithLabelValues(api).Inc()
	sess.start()
	sess.logger.Info().Str("api", api).Str("remote", remote).Msg("session started")
	return sess, nil
}

// forget drops an ended session, keeping a tombstone so that a client
// between requests learns why it ended.
func (s *Server) forget(sess *session) {
	s.mu.Lock()
	if s.sessions[sess.id] == sess {
		delete(s.sessions, sess.id)
		s.unreserveLocked(sess.remote, sess.owner)
		s.ended.add(sess.id, tombstone{api: sess.api, reason: sess.reason(), last: sess.log.last(), at: time.Now()})
	}
	s.mu.Unlock()
	s.nbs.dropKernel(sess.id)
}

// sessionError maps startSession's errors to answers; unexpected ones go
// to the error handler.
func sessionError(c echo.Context, err error) error {
	switch {
	case errors.Is(err, errClientCap):
		return httpError(c, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, errCapacity), errors.Is(err, errDraining):
		return httpError(c, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, kernelpool.ErrUnknownKernel):
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	return err
}

// lookup returns a live session of any API (for tests and internal use;
// routes use the API-scoped lookups).
func (s *Server) lookup(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

// lookupAPI returns a live session of api only: a kernel id must not be a
// way around the other API's rules (the Jupyter API's token).
func (s *Server) lookupAPI(id, api string) *session {
	if sess := s.lookup(id); sess != nil && sess.api == api {
		return sess
	}
	return nil
}

// sageSession is the Sage-cell session a route names.
func (s *Server) sageSession(c echo.Context) *session {
	id, err := pathParam(c, "id")
	if err != nil {
		return nil
	}
	return s.lookupAPI(id, sageCellAPI)
}

// resolveKernel maps what a client asks for (a kernelspec name, or a
// language such as "sage" or "python") to an installed kernelspec.
func (s *Server) resolveKernel(asked string) (string, error) {
	if asked == "" {
		return s.cfg.DefaultKernel, nil
	}
	specs := s.pool.Specs()
	name := strings.ToLower(asked)
	if _, ok := specs[name]; ok {
		return name, nil
	}
	for _, n := range jupytermsg.SortedNames(specs) {
		if strings.EqualFold(specs[n].Language, asked) {
			return n, nil
		}
	}
	return "", fmt.Errorf("%w %q (installed: %s)", kernelpool.ErrUnknownKernel, asked, strings.Join(jupytermsg.SortedNames(specs), ", "))
}

// Drain refuses new sessions, ends every session with a clear reason and
// waits until their kernels are reaped, up to ctx. Sessions end in
// parallel: one slow end must not hold up the others.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		go sess.end(endShutdown)
	}
	for _, sess := range all {
		select {
		case <-sess.stopped:
		case <-ctx.Done():
			return fmt.Errorf("drain: %w", ctx.Err())
		}
	}
	return nil
}

// parseSeconds reads a duration given in (fractional) seconds.
func parseSeconds(v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 1e9 {
		return 0, fmt.Errorf("invalid number of seconds %q", v)
	}
	return time.Duration(f * float64(time.Second)), nil
}
