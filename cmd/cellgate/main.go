// Command cellgate serves Jupyter kernels as embeddable compute cells.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/static"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "cellgate:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		fmt.Println("cellgate serves Jupyter kernels as embeddable compute cells.\n\nCommands:\n  serve    run the server (the only command)")
		fmt.Println()
		usage(os.Stdout)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	if args[0] != "serve" {
		return fmt.Errorf("unknown command %q (try: cellgate serve --help)", args[0])
	}
	o, err := parseOptions(args[1:], os.Getenv)
	if err != nil {
		return err
	}
	log, err := newLogger(o, os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		// After the first signal starts the drain, a second one gets Go's
		// default handling and ends the process at once (bwrap's
		// --die-with-parent takes the kernels with it).
		<-ctx.Done()
		stop()
	}()
	return serve(ctx, o, log)
}

func newLogger(o options, w io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(o.logLevel)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	var log zerolog.Logger
	switch o.logFormat {
	case "json":
		log = zerolog.New(w)
	case "console":
		log = zerolog.New(zerolog.ConsoleWriter{Out: w, TimeFormat: time.DateTime})
	default:
		return log, fmt.Errorf("--log-format: %q is neither console nor json", o.logFormat)
	}
	return log.Level(level).With().Timestamp().Logger(), nil
}

func newLauncher(o options, log zerolog.Logger) (sandbox.Launcher, error) {
	switch o.sandbox {
	case "none":
		if !isLoopback(o.listen) && !o.allowUnsafe {
			return nil, fmt.Errorf("refusing to serve %s with --sandbox=none: anyone who reaches it can run code as this user (use --allow-unsandboxed-public to force)", o.listen)
		}
		return sandbox.None{}, nil
	case "bwrap":
		return newBwrapLauncher(o, log)
	}
	return nil, fmt.Errorf("--sandbox: unknown mode %q (bwrap or none)", o.sandbox)
}

func serve(ctx context.Context, o options, log zerolog.Logger) error {
	poolCfg, err := o.poolConfig()
	if err != nil {
		return err
	}
	if soft, hard, err := raiseFileLimit(); err != nil {
		log.Warn().Err(err).Uint64("open_files", soft).Uint64("open_files_hard", hard).Msg("could not raise the open-file limit")
	} else {
		log.Info().Uint64("open_files", soft).Uint64("open_files_hard", hard).Msg("open-file limit (RLIMIT_NOFILE)")
	}
	specs, problems := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	for _, p := range problems {
		log.Warn().Err(p).Msg("skipping kernelspec")
	}
	if len(specs) == 0 {
		return errors.New("no Jupyter kernelspecs installed (make deps installs python3-ipykernel)")
	}
	launcher, err := newLauncher(o, log)
	if err != nil {
		return err
	}
	if describer, ok := launcher.(interface{ Describe() string }); ok {
		log.Info().Msg(describer.Describe())
	}
	if launcher.Name() == "none" {
		log.Warn().Msg("SANDBOX DISABLED (--sandbox=none): kernels run as this user with full access; for development only")
	}
	workRoot, err := filepath.Abs(filepath.Join(o.dataDir, "kernels"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.runtimeDir, 0o711); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	runtimeRoot, err := os.MkdirTemp(o.runtimeDir, "gw")
	if err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	defer os.RemoveAll(runtimeRoot)

	// Every step of shutdown shares one deadline, set when shutdown
	// begins (or now, if serve fails before): live sessions may run for
	// --drain-timeout, and ending those left, reaping their kernels,
	// writing queued permalinks and leaving the cluster take at most
	// shutdownGrace more, not a multiple of it.
	var shutdownBegan time.Time
	defer func() {
		// Runs last: after the pool and the storage have closed.
		if !shutdownBegan.IsZero() {
			log.Info().Dur("took", time.Since(shutdownBegan)).Msg("cellgate stopped")
		}
	}()
	shutdownCtx := func() (context.Context, context.CancelFunc) {
		if shutdownBegan.IsZero() {
			shutdownBegan = time.Now()
		}
		return context.WithDeadline(context.Background(), shutdownBegan.Add(o.drainTimeout+shutdownGrace))
	}

	// One registry for the process: the pool and the gateway each register
	// their own series with it as they are made.
	metrics := gateway.NewRegistry()
	poolCfg.Specs, poolCfg.Metrics = specs, metrics
	metrics.MustRegister(poolCfg.Kernel.MessageBudget)
	poolCfg.Kernel.Launcher, poolCfg.Kernel.RuntimeRoot, poolCfg.Kernel.WorkRoot, poolCfg.Kernel.Log = launcher, runtimeRoot, workRoot, log
	pool, err := kernelpool.New(poolCfg)
	if err != nil {
		return err
	}
	defer func() {
		// Kernels are stopped even after the deadline: Close only stops
		// waiting for the pool's own goroutines then.
		closeCtx, cancel := shutdownCtx()
		defer cancel()
		if err := pool.Close(closeCtx); err != nil {
			log.Error().Err(err).Msg("closing kernel pool")
		}
	}()

	// The ledger of who was told each permalink id exists before the
	// store whose drops it passes on; a drop replayed from an earlier run
	// belongs to no session and is only logged.
	ledger := permalink.NewLedger(log)
	stack, err := openStorage(ctx, o, log, ledger.Dropped)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := shutdownCtx()
		defer cancel()
		if err := stack.close(closeCtx); err != nil {
			log.Error().Err(err).Msg("closing storage")
		}
	}()

	cfg := o.gatewayConfig()
	cfg.Log, cfg.Storage, cfg.Metrics = log, stack.gateway(o), metrics
	cfg.Storage.Ledger = ledger
	if launcher.Name() == "none" {
		cfg.SandboxWarning = "kernels run unsandboxed (--sandbox=none): development only"
	}
	if starts, ok := launcher.(interface{ KernelStarts() string }); ok {
		cfg.KernelStarts = starts.KernelStarts
	}
	var gw *gateway.Server
	var node *clusterNode
	if o.advertiseURL != "" {
		// The others declared this instance dead while it lived (they told its clients that its
		// sessions ended): end them here too. Only after Start, when gw exists.
		onLost := func(ctx context.Context) { gw.EndSessions(ctx, gateway.EndLost) }
		if node, err = openCluster(ctx, o, stack.store, log, onLost); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		defer func() {
			// After the drain (a second Close does nothing); before storage closes.
			closeCtx, cancel := shutdownCtx()
			defer cancel()
			if err := node.close(closeCtx); err != nil {
				log.Error().Err(err).Msg("leaving the cluster")
			}
		}()
		cfg.Cluster = node
	}
	gw = gateway.New(cfg, pool)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// The timeouts and the per-address connection cap hold for every
	// route, the web client's included.
	previews := func(r *http.Request) (static.Meta, bool) {
		m, ok := gw.PermalinkMeta(r)
		return static.Meta(m), ok
	}
	httpServer := gw.HTTPServer(static.WrapWith(gw.Handler(), previews))
	ln = gw.Listener(ln)
	database := stack.where
	log.Info().Str("listen", ln.Addr().String()).Str("pool", o.pool).Int("max_kernels", o.maxKernels).
		Str("sandbox", launcher.Name()).Str("database", database).Strs("kernelspecs", jupytermsg.SortedNames(specs)).
		Msg("cellgate serving")

	served := make(chan error, 1)
	go func() { served <- httpServer.Serve(ln) }()
	if node != nil {
		// Registered once it serves its advertise URL; Start may wait out the record of another
		// process with this id.
		if err := node.reg.Start(ctx); err != nil {
			_ = httpServer.Close()
			return fmt.Errorf("cluster: %w", err)
		}
		loadCtx, stopLoad := context.WithCancel(context.Background())
		loadDone := make(chan struct{})
		go func() { defer close(loadDone); gw.PublishLoad(loadCtx, loadEvery) }()
		defer func() { stopLoad(); <-loadDone }()
		log.Info().Str("instance", node.reg.ID()).Str("advertise_url", o.advertiseURL).Msg("joined the cluster")
	}
	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info().Dur("deadline", o.drainTimeout).Msg("shutting down: draining sessions")
	drainCtx, cancel := shutdownCtx()
	sessionsUntil := shutdownBegan.Add(o.drainTimeout)
	defer cancel()
	if node != nil {
		// The others stop placing sessions here at once; forwarded requests for the sessions
		// still here keep coming until they end.
		if err := node.reg.SetDraining(drainCtx, true); err != nil {
			log.Warn().Err(err).Msg("cluster: mark draining")
		}
	}
	// New sessions go elsewhere from now on (/readyz 503); the live ones
	// run until they end or --drain-timeout.
	if err := gw.DrainBy(drainCtx, sessionsUntil); err != nil {
		log.Error().Err(err).Msg("drain")
	}
	if err := httpServer.Shutdown(drainCtx); err != nil {
		log.Warn().Err(err).Msg("http shutdown: closing the connections still open")
		_ = httpServer.Close()
	}
	return nil
}

// shutdownGrace is how long shutdown may take after --drain-timeout:
// ending the sessions still live, reaping their kernels, writing queued
// permalinks, leaving the cluster. deploy/cellgate.service's
// TimeoutStopSec leaves room for both.
const shutdownGrace = 10 * time.Second

// raiseFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit and returns the limits now in force: every client connection,
// kernel socket and database connection is a descriptor. Go's runtime
// already raises it to one under the hard limit at start (and os/exec gives
// children the original back); it is set here only when that did not
// happen, since an explicit setrlimit stops that restoring. Sandboxed
// kernels get their own limit (--nofile) whichever way.
func raiseFileLimit() (soft, hard uint64, err error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, 0, fmt.Errorf("getrlimit: %w", err)
	}
	if l.Cur+1 >= l.Max {
		return l.Cur, l.Max, nil
	}
	want := l
	want.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return l.Cur, l.Max, fmt.Errorf("setrlimit to %d: %w", l.Max, err)
	}
	return want.Cur, want.Max, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
