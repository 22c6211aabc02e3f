// Package gateway serves cellgate's HTTP APIs: the Sage Cell Server API,
// the Jupyter Server kernel API, websockets and long-polling, on top of a
// kernel pool.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

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
	// JupyterIdleTimeout culls Jupyter-API kernels with no activity.
	JupyterIdleTimeout time.Duration
	// LeaseTimeout is how long a request waits for a kernel.
	LeaseTimeout time.Duration
	// MaxKernelsPerClient and MaxKernelsPerAddr cap sessions per client
	// key and per remote address.
	MaxKernelsPerClient int
	MaxKernelsPerAddr   int
	// ServiceTimeout is the wall-clock limit of one /service computation.
	ServiceTimeout time.Duration
	// MaxCodeBytes refuses larger /service code with 413.
	MaxCodeBytes int
	// PollWait is how long a long-poll GET is held open.
	PollWait time.Duration
	// PingInterval keeps websockets alive through proxies.
	PingInterval time.Duration
	// SandboxWarning is shown in /api status when kernels run unsandboxed.
	SandboxWarning string
	// Storage holds permalinks and kernel files; zero disables them.
	Storage Storage
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
	setDefault(&c.JupyterIdleTimeout, 30*time.Minute)
	setDefault(&c.LeaseTimeout, 10*time.Second)
	setDefault(&c.ServiceTimeout, 30*time.Second)
	setDefault(&c.PollWait, 25*time.Second)
	setDefault(&c.PingInterval, 30*time.Second)
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
	if c.MaxCodeBytes == 0 {
		c.MaxCodeBytes = 65000
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

	started time.Time
	nbs     notebookSessions
	metrics *metrics

	mu       sync.Mutex
	sessions map[string]*session
	draining bool
}

// New builds the gateway over pool.
func New(cfg Config, pool Pool) *Server {
	cfg.applyDefaults()
	s := &Server{cfg: cfg, pool: pool, log: cfg.Log, sessions: map[string]*session{}, started: time.Now()}
	s.metrics = newMetrics(s)
	s.echo = s.routes()
	return s
}

// Handler is the gateway's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// apiError is the JSON body of every error answer.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// httpError answers with a JSON error and, for capacity errors, Retry-After.
func httpError(c echo.Context, code int, message string) error {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		c.Response().Header().Set("Retry-After", "5")
	}
	return c.JSON(code, apiError{Error: http.StatusText(code), Message: message})
}

// errorHandler turns echo's own errors (404 routes, bad methods, body too
// large) into the JSON error shape.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code, msg = he.Code, fmt.Sprint(he.Message)
	} else {
		s.log.Error().Err(err).Str("path", c.Path()).Msg("request failed")
	}
	_ = httpError(c, code, msg)
}

// errCapacity and errClientCap are the reasons a session cannot start.
var (
	errCapacity  = errors.New("server at capacity")
	errClientCap = errors.New("too many kernels for this client")
	errDraining  = errors.New("server is shutting down")
)

// startSession leases a kernel and registers its session.
func (s *Server) startSession(ctx context.Context, spec, api, remote, owner, baseURL string, life lifetime) (*session, error) {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return nil, errDraining
	}
	perAddr, perClient := 0, 0
	for _, sess := range s.sessions {
		if sess.remote == remote {
			perAddr++
		}
		if owner != "" && sess.owner == owner {
			perClient++
		}
	}
	s.mu.Unlock()
	if perAddr >= s.cfg.MaxKernelsPerAddr || (owner != "" && perClient >= s.cfg.MaxKernelsPerClient) {
		s.metrics.errors.WithLabelValues("client_cap").Inc()
	}
	if perAddr >= s.cfg.MaxKernelsPerAddr {
		return nil, fmt.Errorf("%w: %d kernels for address %s", errClientCap, perAddr, remote)
	}
	if owner != "" && perClient >= s.cfg.MaxKernelsPerClient {
		return nil, fmt.Errorf("%w: %d kernels for client %s", errClientCap, perClient, owner)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTimeout)
	defer cancel()
	began := time.Now()
	k, err := s.pool.Lease(ctx, spec)
	s.metrics.leaseWait.WithLabelValues(spec).Observe(time.Since(began).Seconds())
	if err != nil {
		s.metrics.errors.WithLabelValues("lease").Inc()
		if errors.Is(err, kernelpool.ErrNoKernel) || errors.Is(err, kernelpool.ErrPoolClosed) {
			return nil, fmt.Errorf("%w: %w", errCapacity, err)
		}
		return nil, err
	}
	sess := newSession(k, spec, api, remote, owner, life, &s.cfg)
	sess.metrics = s.metrics
	s.metrics.sessions.WithLabelValues(api).Inc()
	if api != jupyterAPI {
		sess.finish = func(sess *session, reply *jupytermsg.Message, p pendingExecution) *jupytermsg.Message {
			return s.finishExecution(sess, reply, p.wantsFiles, p.permalink)
		}
		sess.permalink = s.recordPermalink
		s.watchFiles(sess, baseURL)
	}
	sess.start()
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		sess.end(endShutdown)
		return nil, errDraining
	}
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	sess.mu.Lock()
	sess.onEnd = append(sess.onEnd, s.forget)
	sess.mu.Unlock()
	sess.logger.Info().Str("api", api).Str("remote", remote).Msg("session started")
	return sess, nil
}

func (s *Server) forget(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess.id)
	s.mu.Unlock()
}

// sessionError maps startSession's errors to answers.
func sessionError(c echo.Context, err error) error {
	switch {
	case errors.Is(err, errClientCap):
		return httpError(c, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, errCapacity), errors.Is(err, errDraining):
		return httpError(c, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, kernelpool.ErrUnknownKernel):
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	return httpError(c, http.StatusInternalServerError, err.Error())
}

func (s *Server) lookup(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
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
// waits for them, up to ctx.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.end(endShutdown)
	}
	// Shutdown is idempotent and returns once the kernel is reaped.
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, sess := range all {
			wg.Add(1)
			go func() { defer wg.Done(); sess.kernel.Shutdown() }()
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain: %w", ctx.Err())
	}
}

// parseSeconds reads a duration given in (fractional) seconds.
func parseSeconds(v string) (time.Duration, error) {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1e9 {
		return 0, fmt.Errorf("invalid number of seconds %q", v)
	}
	return time.Duration(f * float64(time.Second)), nil
}
