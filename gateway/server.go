// Package gateway serves cellgate's HTTP APIs: the Sage Cell Server API,
// the Jupyter Server kernel API, websockets and long-polling, on top of a
// kernel pool. The life of a session (relaying, replay, permalinks and
// uploads) is package session's; this package starts sessions, finds them
// for requests, and speaks HTTP.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/storage"
)

// Pool is what the gateway needs from the kernel pool.
type Pool interface {
	Lease(ctx context.Context, req kernelpool.LeaseRequest) (*kernelpool.Kernel, error)
	Specs() map[string]jupytermsg.Spec
	Warm() bool
	Stats() []kernelpool.Stats
}

// Server is the gateway.
type Server struct {
	cfg        Config
	pool       Pool
	echo       *echo.Echo
	log        zerolog.Logger
	metrics    *metrics
	sessions   *registry
	notebooks  notebooks
	permalinks *permalink.Recorder // nil without a permalink store
	languages  languages
	// permalinkRate bounds POST /permalink per address.
	permalinkRate *rateLimiter
	// uploadQuota bounds the kernel files each client address uploads.
	uploadQuota *storage.UploadQuota
	started     time.Time
	// everWarm is set once the pool has been warm: from then on a pool
	// that is momentarily empty is refilling, not failing (/readyz).
	everWarm atomic.Bool
	// cellSessions caps the kernels of each Sage-cell CellSessionID.
	cellSessions *cellSessions
	// releases are the cluster releases of ended sessions in flight.
	releases inflight
}

// New builds the gateway over pool.
func New(cfg Config, pool Pool) *Server {
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, pool: pool, log: cfg.Log, started: time.Now(), cellSessions: newCellSessions(cfg.MaxKernelsPerCellSession),
		languages: findLanguages(defaultLookPath), permalinkRate: newRateLimiter(cfg.PermalinksPerMinute),
		uploadQuota: storage.NewUploadQuota(cfg.Storage.UploadQuota)}
	reg := cfg.Metrics
	if reg == nil {
		reg = NewRegistry()
	}
	sessionMetrics := session.NewMetrics(reg)
	s.sessions = newRegistry(cfg.MaxKernelsPerAddr, cfg.MaxKernelsPerClient, kernelTime{perAddr: cfg.KernelTimePerAddr, window: cfg.KernelTimeWindow}, sessionMetrics.Errors)
	s.metrics = newMetrics(reg, sessionMetrics, s.sessions, cfg.Storage.Permalinks)
	if cfg.Storage.Permalinks != nil {
		ledger := cfg.Storage.Ledger
		if ledger == nil {
			ledger = permalink.NewLedger(cfg.Log)
		}
		var results permalink.ResultStore
		var images permalink.ImageStore
		if cfg.Storage.Results != nil {
			results = cfg.Storage.Results
			if cfg.Storage.Files != nil {
				images = cfg.Storage.Files
			}
		}
		s.permalinks = permalink.NewRecorder(cfg.Storage.Permalinks, ledger, results, images, func(took time.Duration) {
			s.metrics.session.Storage.WithLabelValues("permalink_save").Observe(took.Seconds())
		}, cfg.Log)
	}
	s.echo = s.routes()
	return s
}

// Handler is the gateway's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// startSession leases a kernel and registers its session. baseURL is where
// the client reaches this server, for the links to the files it writes.
// With no kernel ready, the request waits in the pool's queue, taking
// turns with other client addresses, up to LeaseTimeout; it is refused at
// once (503, with a Retry-After from the queue's estimate) when the
// expected wait is longer.
func (s *Server) startSession(ctx context.Context, choice kernelChoice, api session.API, remote, clientKey, baseURL string, life session.Lifetime) (*session.Session, error) {
	kernelName := choice.Kernel
	release, err := s.sessions.reserveWith(remote, clientKey, s.othersOf(ctx, remote))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTimeout)
	defer cancel()
	began := time.Now()
	k, err := s.pool.Lease(ctx, kernelpool.LeaseRequest{Kernel: kernelName, Client: queueKey(remote)})
	s.metrics.leaseWait.WithLabelValues(kernelName).Observe(time.Since(began).Seconds())
	if err != nil {
		release()
		s.metrics.session.Errors.WithLabelValues("lease").Inc()
		var wait *kernelpool.WaitError
		switch {
		case errors.As(err, &wait):
			return nil, refusedLease(err, wait)
		case errors.Is(err, kernelpool.ErrNoKernel) || errors.Is(err, kernelpool.ErrPoolClosed):
			return nil, fmt.Errorf("%w: %w", errCapacity, err)
		}
		return nil, fmt.Errorf("lease a %s kernel: %w", kernelName, err)
	}
	// A kernel handed out is proof the pool has warmed, whether or not
	// /readyz was asked meanwhile.
	s.everWarm.Store(true)
	o := session.Options{
		API: api, KernelName: kernelName, Remote: remote, ClientKey: clientKey, Life: life,
		Config: session.Config{
			ReplayMessages: s.cfg.ReplayMessages, ReplayBytes: s.cfg.ReplayBytes, DetachGrace: s.cfg.DetachGrace,
			MaxPendingExecutions: s.cfg.MaxPendingExecutions,
			UploadTimeout:        s.cfg.Storage.UploadTimeout, ReplyHold: s.cfg.Storage.ReplyHold,
		},
		Metrics: s.metrics.session, Log: s.log,
		// Every hook is in place before the session can end, so an end at
		// any point after start is forgotten and its slot given back.
		OnEnd: func(sess *session.Session) { s.forget(sess); s.release(sess) },
	}
	if choice.Language != "" {
		o.Language = choice.Language
		o.Wrap = func(code string) string { return wrapForSage(choice.Language, code) }
	}
	if api != session.Jupyter {
		if s.permalinks != nil {
			o.Permalinks = s.permalinks
			if s.permalinks.KeepsResults() {
				o.Results, o.ResultBudget = s.permalinks, s.cfg.Storage.ResultBudget
			}
		}
		o.Files, o.Link = s.watchFiles(k, kernelName, baseURL, remote)
	}
	sess := session.New(k, o)
	// Claimed in the cluster before its id is answered, so that every
	// instance finds it.
	if err := s.claim(ctx, sess); err != nil {
		release()
		sess.Discard()
		s.log.Warn().Err(err).Str("session", sess.ID()).Msg("cluster: claim session")
		return nil, fmt.Errorf("%w: the cluster registry: %w", errCapacity, err)
	}
	if err := s.sessions.add(sess); err != nil {
		sess.Discard()
		s.releaseID(sess.ID(), err.Error())
		return nil, err
	}
	s.metrics.sessions.WithLabelValues(string(api)).Inc()
	sess.Start()
	return sess, nil
}

// capacityError is errCapacity with the time after which a retry should
// find room (Retry-After).
type capacityError struct {
	err        error
	retryAfter time.Duration
}

func (e *capacityError) Error() string   { return fmt.Sprintf("%s: %s", errCapacity, e.err) }
func (e *capacityError) Unwrap() []error { return []error{errCapacity, e.err} }

// RetryAfter is when to come back.
func (e *capacityError) RetryAfter() time.Duration { return e.retryAfter }

// refusedLease is a lease refused for its expected wait: come back when
// the queue ahead should have drained enough for the wait to fit.
func refusedLease(err error, wait *kernelpool.WaitError) *capacityError {
	return &capacityError{err: err, retryAfter: max(time.Second, wait.Wait-wait.Within)}
}

// queueKey is the client address the pool's queue takes turns by: the
// address itself, or for IPv6 its /64, which one client usually holds
// whole.
func queueKey(remote string) string {
	ip, err := netip.ParseAddr(remote)
	if err != nil || !ip.Is6() || ip.Is4In6() {
		return remote
	}
	prefix, _ := ip.Prefix(64)
	return prefix.String()
}

// watchFiles watches a kernel's working directory for the files its
// executions write, charging them to the upload quota of the session's
// client address remote; nil without file storage.
func (s *Server) watchFiles(k *kernelpool.Kernel, kernelName, baseURL, remote string) (session.Watcher, func(id, name string) string) {
	if s.cfg.Storage.Files == nil {
		return nil, nil
	}
	w, err := s.cfg.Storage.Files.Watch(k.WorkDir, storage.FileOwner{Session: k.ID, Kernel: kernelName})
	if err != nil {
		s.log.Warn().Err(err).Str("session", k.ID).Msg("kernel files will not be uploaded")
		return nil, nil
	}
	w.ChargeTo(s.uploadQuota, queueKey(remote))
	return w, func(id, name string) string { return fileURL(baseURL, id, name) }
}

// forget drops an ended session from the registry and its notebooks.
func (s *Server) forget(sess *session.Session) {
	s.sessions.forget(sess)
	for _, id := range s.notebooks.dropKernel(sess.ID()) {
		s.releaseID(id, sess.Reason())
	}
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

// Drain refuses new sessions, ends every session at once with a clear
// reason (session.EndShutdown) and waits until their kernels are reaped,
// up to ctx. Sessions end in parallel: one slow end must not hold up the
// others.
func (s *Server) Drain(ctx context.Context) error { return s.DrainBy(ctx, time.Time{}) }

// EndDrainDeadline is why a session still live when its server's drain
// deadline passed ended.
const EndDrainDeadline = session.EndShutdown + ": its drain deadline passed"

// DrainBy refuses new sessions from now on (/readyz answers 503, so a
// balancer sends them elsewhere; in a cluster a request for one that still
// lands here is placed on another instance) and lets the live ones run
// until they end by themselves or sessionsUntil passes. Those left are
// then ended (EndDrainDeadline; session.EndShutdown with a zero
// sessionsUntil, at once), and DrainBy waits until their kernels are
// reaped and the cluster knows why each ended, up to ctx.
func (s *Server) DrainBy(ctx context.Context, sessionsUntil time.Time) error {
	all := s.sessions.drain()
	reason := session.EndShutdown
	if !sessionsUntil.IsZero() {
		s.log.Info().Int("sessions", len(all)).Time("until", sessionsUntil).Msg("draining: live sessions run until they end or the deadline")
		deadline := time.NewTimer(time.Until(sessionsUntil))
		defer deadline.Stop()
	wait:
		for _, sess := range all {
			select {
			case <-sess.Stopped():
			case <-deadline.C:
				reason = EndDrainDeadline
				break wait
			case <-ctx.Done():
				reason = EndDrainDeadline
				break wait
			}
		}
	}
	for _, sess := range all {
		go sess.End(reason) // nothing for one that ended already
	}
	for _, sess := range all {
		select {
		case <-sess.Stopped():
		case <-ctx.Done():
			return fmt.Errorf("drain: %w", ctx.Err())
		}
	}
	// The cluster learns why each ended before this instance leaves it.
	if err := s.releases.wait(ctx); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}
