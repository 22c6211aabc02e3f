package gateway

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/result"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/storage"
)

// Config configures the gateway. Start from DefaultConfig; a zero field
// takes its default too.
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
	// SageCellDefaultKernel is used when a Sage-cell request (/kernel,
	// /service, /permalink) names none; empty: the SageMath kernel when
	// one is installed (the Sage cell's own scripts expect Sage), else
	// DefaultKernel.
	SageCellDefaultKernel string
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
	// LeaseTimeout is how long a request waits for a kernel. The default,
	// 20 s, lets a class of 50 pressing Evaluate at once be served on two
	// cores (about five forked kernels a second: 10 s for the last of them)
	// with room for a slower machine; a waiting client is told its place.
	LeaseTimeout time.Duration
	// MaxKernelsPerClient and MaxKernelsPerAddr cap sessions per client
	// key and per remote address. The per-address default is FairShare of
	// the pool's default MaxKernels; cellgate serve takes FairShare of
	// --max-kernels unless told otherwise.
	MaxKernelsPerClient int
	MaxKernelsPerAddr   int
	// MaxKernelsPerCellSession caps the sessions of one Sage-cell
	// CellSessionID (one page of the Sage cell's front end), as the Sage
	// cell does (then 429 too_many_kernels_for_cell_session; default 5,
	// sagecell.sagemath.org's setting).
	MaxKernelsPerCellSession int
	// PermalinksPerMinute is how many POST /permalink one address may
	// make a minute (in bursts of as many); then 429 with Retry-After.
	PermalinksPerMinute int
	// KernelTimePerAddr is the kernel time (kernel-seconds, written as a
	// duration) one remote address may use per KernelTimeWindow: each
	// session it holds draws on it for as long as it lives, and it refills
	// evenly over the window, up to KernelTimePerAddr. While it is used up,
	// the address's new sessions are refused (429, with Retry-After);
	// those it holds carry on. An overdraft is forgiven beyond one
	// KernelTimePerAddr, so the wait is at most one window once the
	// address's sessions end.
	KernelTimePerAddr time.Duration
	KernelTimeWindow  time.Duration
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
	// HeaderTimeout bounds the reading of a request's headers and
	// BodyTimeout the reading of its body (from the end of the headers):
	// a client trickling either is cut off. IdleTimeout closes a
	// keep-alive connection with no request in flight. None of them
	// applies to an upgraded websocket or to a long-poll being held: those
	// keep their own deadlines (HTTPServer, Listener).
	HeaderTimeout time.Duration
	BodyTimeout   time.Duration
	IdleTimeout   time.Duration
	// MaxConnsPerAddr caps the open TCP connections from one peer
	// address (an IPv6 peer counts by its /64); the connection over the
	// cap is answered 429 and closed. With TrustProxy, peers that may be
	// the proxy (loopback, private and link-local addresses, as for
	// X-Forwarded-For) are not capped: the proxy speaks for many clients.
	MaxConnsPerAddr int
	// SandboxWarning is shown in /api status when kernels run unsandboxed.
	SandboxWarning string
	// KernelStarts, if set, says how kernels start now (forked, or cold
	// and why), shown in /readyz: an operator sees there that the fork
	// templates failed and kernels start cold.
	KernelStarts func() string
	// Storage holds permalinks and kernel files; zero disables them.
	Storage Storage
	// Cluster joins the instance to others sharing its database: requests
	// for their sessions are forwarded to them, its own are claimed there
	// (cluster.go). Nil: the instance is alone.
	Cluster Cluster
	// Metrics is the registry the gateway registers its series with and
	// serves on /metrics (NewRegistry); nil makes one of its own.
	Metrics *prometheus.Registry
	Log     zerolog.Logger
}

// Storage is the gateway's optional storage; nil fields disable a feature.
type Storage struct {
	Permalinks PermalinkStore
	// Ledger remembers which session was told each permalink id; give the
	// same one to the permalink store as its drop callback
	// (Ledger.Dropped), so a dropped permalink reaches its clients. Nil
	// makes one that nobody calls.
	Ledger *permalink.Ledger
	// Results keeps what each recorded execution showed with its
	// permalink, up to ResultBudget bytes inline; nil keeps none.
	Results      ResultStore
	ResultBudget int
	Files        FileStore
	// Ping tells /readyz whether the database answers.
	Ping func(context.Context) error
	// UploadTimeout bounds the upload after one execution.
	UploadTimeout time.Duration
	// ReplyHold is how long an execute_reply waits for its files to be
	// stored; files stored later are announced when they land. A slow
	// database delays the file list, never the computation.
	ReplyHold time.Duration
	// UploadQuota bounds the files the kernels of one client address (an
	// IPv6 client by its /64) upload over a rolling window, all its
	// sessions together; files over it are not uploaded and their client
	// is told why, and the computation goes on. It counts in this
	// instance only: in a cluster each instance keeps its own. Zero fields
	// take storage.DefaultUploadQuota's values; negative caps are no cap.
	UploadQuota storage.UploadQuotaConfig
}

// DefaultConfig is the gateway's settings when nothing is said: the one
// place each default lives (cellgate's flags take theirs from here).
func DefaultConfig() Config {
	return Config{
		AllowOrigins:         []string{"*"},
		DefaultKernel:        "python3",
		MaxMessageBytes:      kernelpool.DefaultMaxMessageBytes,
		ReplayMessages:       2000,
		ReplayBytes:          16 << 20,
		MaxTimeout:           time.Hour,
		MaxLifespan:          4 * time.Hour,
		OneShotGrace:         time.Minute,
		DetachGrace:          10 * time.Second,
		JupyterIdleTimeout:   30 * time.Minute,
		LeaseTimeout:         20 * time.Second,
		MaxKernelsPerClient:  4,
		MaxKernelsPerAddr:    FairShare(kernelpool.DefaultConfig().MaxKernels),
		KernelTimePerAddr:    2 * time.Hour,
		KernelTimeWindow:     time.Hour,
		MaxPendingExecutions: 256,
		ServiceTimeout:       30 * time.Second,
		MaxCodeChars:         65000,
		PollWait:             25 * time.Second,
		PingInterval:         30 * time.Second,
		HeaderTimeout:        10 * time.Second,
		BodyTimeout:          60 * time.Second,
		IdleTimeout:          60 * time.Second,
		MaxConnsPerAddr:      256,
		Storage: Storage{UploadTimeout: 10 * time.Second, ReplyHold: 3 * time.Second, ResultBudget: result.DefaultBudget,
			UploadQuota: storage.DefaultUploadQuota()},

		// sagecell.sagemath.org's setting.
		MaxKernelsPerCellSession: 5,
		PermalinksPerMinute:      60,
	}
}

// withDefaults fills every zero field from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	fill(&c.DefaultKernel, d.DefaultKernel)
	fill(&c.MaxMessageBytes, d.MaxMessageBytes)
	fill(&c.ReplayMessages, d.ReplayMessages)
	fill(&c.ReplayBytes, d.ReplayBytes)
	fill(&c.MaxTimeout, d.MaxTimeout)
	fill(&c.MaxLifespan, d.MaxLifespan)
	fill(&c.OneShotGrace, d.OneShotGrace)
	fill(&c.DetachGrace, d.DetachGrace)
	fill(&c.JupyterIdleTimeout, d.JupyterIdleTimeout)
	fill(&c.LeaseTimeout, d.LeaseTimeout)
	fill(&c.MaxKernelsPerClient, d.MaxKernelsPerClient)
	fill(&c.MaxKernelsPerAddr, d.MaxKernelsPerAddr)
	fill(&c.MaxKernelsPerCellSession, d.MaxKernelsPerCellSession)
	fill(&c.KernelTimePerAddr, d.KernelTimePerAddr)
	fill(&c.KernelTimeWindow, d.KernelTimeWindow)
	fill(&c.MaxPendingExecutions, d.MaxPendingExecutions)
	fill(&c.ServiceTimeout, d.ServiceTimeout)
	fill(&c.PermalinksPerMinute, d.PermalinksPerMinute)
	fill(&c.MaxCodeChars, d.MaxCodeChars)
	fill(&c.PollWait, d.PollWait)
	fill(&c.PingInterval, d.PingInterval)
	fill(&c.HeaderTimeout, d.HeaderTimeout)
	fill(&c.BodyTimeout, d.BodyTimeout)
	fill(&c.IdleTimeout, d.IdleTimeout)
	fill(&c.MaxConnsPerAddr, d.MaxConnsPerAddr)
	fill(&c.Storage.UploadTimeout, d.Storage.UploadTimeout)
	fill(&c.Storage.ReplyHold, d.Storage.ReplyHold)
	fill(&c.Storage.ResultBudget, d.Storage.ResultBudget)
	c.Storage.UploadQuota = c.Storage.UploadQuota.WithDefaults()
	if len(c.AllowOrigins) == 0 {
		c.AllowOrigins = d.AllowOrigins
	}
	return c
}

// FairShare is the default cap on the sessions of one remote address
// when maxKernels kernels exist in all: a quarter of them (at least one),
// so that one address leaves room for others.
func FairShare(maxKernels int) int { return max(1, maxKernels/4) }

func fill[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}
