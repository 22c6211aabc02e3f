package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cellgate/cellgate/cluster"
	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/storage"
)

// options are cellgate serve's settings, one field per row of settings
// (where their defaults come from). Every flag can also be set by the
// environment variable CELLGATE_<FLAG> (upper case, '-' as '_'); a flag on
// the command line wins.
type options struct {
	configFile          string
	listen              string
	publicURL           string
	dataDir             string
	runtimeDir          string
	mongoURI            string
	pool                string
	maxKernels          int
	poolMemoryMB        int64
	leaseQueue          string
	sandbox             string
	allowUnsafe         bool
	token               string
	allowOrigin         string
	trustProxy          bool
	defaultKernel       string
	maxTimeout          time.Duration
	maxLifespan         time.Duration
	leaseTimeout        time.Duration
	serviceTimeout      time.Duration
	pollWait            time.Duration
	logLevel            string
	logFormat           string
	drainTimeout        time.Duration
	database            string
	dbConnectRetry      time.Duration
	kernelMemory        int64
	kernelCPU           time.Duration
	kernelCPUShare      float64
	kernelDisk          int64
	kernelProcs         int
	kernelLifespan      time.Duration
	fork                string
	forkMax             int
	maxMessageMB        int64
	kernelMessageMB     int64
	perAddress          int
	perClient           int
	jupyterIdle         time.Duration
	detachGrace         time.Duration
	headerTimeout       time.Duration
	bodyTimeout         time.Duration
	idleTimeout         time.Duration
	connsPerAddr        int
	sageDefault         string
	perCellSession      int
	storeResults        bool
	resultKB            int
	fileTTL             time.Duration
	permalinksPerMinute int
	maxStorageMB        int64
	uploadMBPerAddr     int64
	uploadFilesPerAddr  int
	kernelTime          time.Duration
	kernelWindow        time.Duration
	advertiseURL        string
	clusterSecret       string
	instanceID          string
	clusterHeartbeat    time.Duration
	clusterExpiry       time.Duration
}

// setting is one row of the table that cellgate serve's flags, their
// environment variables, --help and README.md's options table are all built
// from, so that none of them can say something the others do not.
type setting struct {
	name string
	// help is markdown (backticks around literals); --help shows it
	// without the backticks.
	help string
	// def is the default as text, as a flag would parse it.
	def string
	// docDefault stands for def in README.md where def alone would
	// mislead: it depends on the machine, or empty means something.
	docDefault string
	define     func(fs *flag.FlagSet, usage string)
}

type settingType interface {
	string | int | int64 | bool | float64 | time.Duration
}

// opt binds a setting to the option at p, starting at def.
func opt[T settingType](name string, p *T, def T, help string) setting {
	s := setting{name: name, help: help}
	switch p := any(p).(type) {
	case *string:
		d := any(def).(string)
		s.def, s.define = d, func(fs *flag.FlagSet, u string) { fs.StringVar(p, name, d, u) }
	case *int:
		d := any(def).(int)
		s.def, s.define = strconv.Itoa(d), func(fs *flag.FlagSet, u string) { fs.IntVar(p, name, d, u) }
	case *int64:
		d := any(def).(int64)
		s.def, s.define = strconv.FormatInt(d, 10), func(fs *flag.FlagSet, u string) { fs.Int64Var(p, name, d, u) }
	case *bool:
		d := any(def).(bool)
		s.def, s.define = strconv.FormatBool(d), func(fs *flag.FlagSet, u string) { fs.BoolVar(p, name, d, u) }
	case *float64:
		d := any(def).(float64)
		s.def, s.define = strconv.FormatFloat(d, 'g', -1, 64), func(fs *flag.FlagSet, u string) { fs.Float64Var(p, name, d, u) }
	case *time.Duration:
		d := any(def).(time.Duration)
		s.def, s.define = shortDuration(d), func(fs *flag.FlagSet, u string) { fs.DurationVar(p, name, d, u) }
	}
	return s
}

// documented sets what README.md shows as the default.
func (s setting) documented(text string) setting {
	s.docDefault = text
	return s
}

// settings is the table, bound to o. Each default comes from the package
// that owns the setting, so a package that changes one changes the flag,
// --help and the README with it; the literals here are cmd's own settings.
func settings(o *options) []setting {
	st := storage.DefaultConfig()
	gw := gateway.DefaultConfig()
	kp := kernelpool.DefaultConfig()
	sb := sandbox.DefaultConfig()
	cl := cluster.DefaultConfig()
	return []setting{
		opt("config", &o.configFile, "", "file of `name = value` lines (flag names without `--`; `#` starts a comment); flags and `CELLGATE_*` variables win over it"),
		opt("listen", &o.listen, "127.0.0.1:8888", "address to serve HTTP on"),
		opt("public-url", &o.publicURL, "", "base URL clients use to reach cellgate, for `ws_url` and file links (set it behind a proxy)").
			documented("from each request"),
		opt("data-dir", &o.dataDir, "./data", "directory for the embedded database (`db/`), the journal of permalinks not yet written (`permalink-queue/`) and kernel working directories (`kernels/`)"),
		opt("runtime-dir", &o.runtimeDir, defaultRuntimeDir(), "short directory for kernel connection files and ipc sockets (unix socket paths are limited to 107 bytes)").
			documented("`/run/cellgate` as root, else `$TMPDIR/cellgate-<uid>`"),
		opt("mongo-uri", &o.mongoURI, "", "MongoDB URI (standalone, replica set, `mongos`); unset starts the embedded FerretDB under `--data-dir`"),
		opt("database", &o.database, st.Database, "MongoDB database name"),
		opt("db-connect-retry", &o.dbConnectRetry, st.ConnectRetry, "keep retrying an unreachable database at start-up this long (0: fail at once)"),
		opt("pool", &o.pool, poolAuto, "ready kernels kept per kernelspec, e.g. `python3=2,sagemath=1`; `auto`: python3=4 when the sandbox forks python3 kernels from a template (2 when they start cold), and one of every other installed kernel it forks (SageMath), so that a reader choosing it does not wait for a start; none of a kernel that would start cold; all within half of `--max-kernels`"),
		opt("max-kernels", &o.maxKernels, kp.MaxKernels, "cap on all kernels: ready, starting and in use"),
		opt("pool-memory-mb", &o.poolMemoryMB, kp.MemoryBudget>>20, "memory budget in MiB of the ready kernels: beyond `--pool`, the pool grows toward what the last minute of requests needed while its ready kernels (at their measured PSS) fit; `0`: never beyond `--pool`"),
		opt("lease-queue", &o.leaseQueue, string(kp.Queue), "how requests wait when no kernel is ready: `fair` (client addresses take turns; 503 at once when the expected wait exceeds `--lease-timeout`) or `fifo` (one line; each waits out `--lease-timeout`)"),
		opt("sandbox", &o.sandbox, "bwrap", "kernel isolation: `bwrap`, or `none` (development only: loud warning, refused on a non-loopback address unless `--allow-unsandboxed-public`)"),
		opt("allow-unsandboxed-public", &o.allowUnsafe, false, "let `--sandbox=none` serve a non-loopback address (dangerous)"),
		opt("kernel-cpu", &o.kernelCPU, sb.CPUTime, "sandbox: CPU time limit of each kernel process (SIGXCPU, then SIGKILL 2 s later) and of a kernel's whole process tree, ended processes included (its cgroup's cpuacct, or summed from /proc without one; checked every 250 ms: the kernel is killed), truncated to whole seconds"),
		opt("kernel-memory-mb", &o.kernelMemory, sb.Memory>>20, "sandbox: memory limit in MiB, of each kernel process's address space (allocations fail) and of a kernel's whole process tree: its memory cgroup (the OOM killer holds it, files in its tmpfs included) or, without one, its proportional set size checked every 250 ms; either way the kernel is ended and its client told"),
		opt("kernel-cpu-share", &o.kernelCPUShare, sb.CPUShare, "sandbox: cores a kernel's whole process tree may use on average: its cgroup's CPU quota, or, without one, a kernel more than a second's worth ahead is stopped until it is back; `0`: no share"),
		opt("kernel-disk-mb", &o.kernelDisk, sb.Disk>>20, "sandbox: size of a kernel's writable space, in MiB (a tmpfs: it is RAM)"),
		opt("kernel-processes", &o.kernelProcs, sb.Processes, "sandbox: processes and threads per kernel (RLIMIT_NPROC of its uid, and its cgroup's pids.max, which also counts its sandbox's own one or two processes)"),
		opt("kernel-lifespan", &o.kernelLifespan, sb.Lifespan, "sandbox: wall-clock life of a kernel process, a backstop behind the session limits"),
		opt("fork", &o.fork, onOff(sb.Fork), "sandbox: `on` makes Python (ipykernel) and SageMath kernels by forking a template that has imported the kernel machinery (and `sage.all`) once: a fraction of a cold start's time and memory, same isolation (each kernel is one fork, pid 2 of its own pid namespace under a `catatonit` reaper; a template keeps the next kernel forked ahead of its request); a template is replaced after `--fork-max` kernels or when what it imported changes on disk. `off` starts every kernel cold. Other kernels always start cold"),
		opt("fork-max", &o.forkMax, sb.ForkMax, "sandbox: kernels one fork-server template makes before a fresh one replaces it (the old one ends with its last kernel)"),
		opt("token", &o.token, gw.Token, "token required by the Jupyter Server API (`/api`); unset: no auth, and callers only see kernels their address started"),
		opt("allow-origin", &o.allowOrigin, strings.Join(gw.AllowOrigins, ","), "comma-separated origins allowed to embed cells (CORS and websocket origin check), or `*`"),
		opt("trust-proxy", &o.trustProxy, gw.TrustProxy, "take client addresses from `X-Forwarded-For` (behind a reverse proxy; the per-address cap counts them)"),
		opt("default-kernel", &o.defaultKernel, gw.DefaultKernel, "kernelspec used when a request names none"),
		opt("sagecell-default-kernel", &o.sageDefault, gw.SageCellDefaultKernel, "kernelspec the Sage-cell routes (`/kernel`, `/service`, `/permalink`) use when a request names none; unset: the SageMath kernel when installed (the Sage cell's own scripts expect Sage), else `--default-kernel`").
			documented("`sagemath` if installed"),
		opt("max-timeout", &o.maxTimeout, gw.MaxTimeout, "longest idle timeout a client (or an interact) may ask for"),
		opt("max-lifespan", &o.maxLifespan, gw.MaxLifespan, "hard cap on any session's life"),
		opt("lease-timeout", &o.leaseTimeout, gw.LeaseTimeout, "how long a request waits for a kernel when none is ready (then 503, at once if the queue's expected wait is longer)"),
		opt("service-timeout", &o.serviceTimeout, gw.ServiceTimeout, "wall-clock limit of one `/service` computation"),
		opt("poll-wait", &o.pollWait, gw.PollWait, "how long a long-poll request is held open"),
		opt("max-kernels-per-address", &o.perAddress, 0, "sessions one remote address may hold at once (then 429); 0: a quarter of `--max-kernels`, at least 1, so one address leaves room for others").
			documented("0: max(1, `--max-kernels`/4)"),
		opt("kernel-time-per-address", &o.kernelTime, gw.KernelTimePerAddr, "kernel time one remote address may use per `--kernel-time-window`: each session it holds uses it up as it lives, and it refills evenly over the window; while it is used up, the address's new sessions get 429 with Retry-After (those it holds carry on)"),
		opt("kernel-time-window", &o.kernelWindow, gw.KernelTimeWindow, "the window `--kernel-time-per-address` refills over; an address that overdrew waits at most this long once its sessions end"),
		opt("max-kernels-per-client", &o.perClient, gw.MaxKernelsPerClient, "sessions one `client_id` may hold at once (then 429)"),
		opt("max-kernels-per-cell-session", &o.perCellSession, gw.MaxKernelsPerCellSession, "sessions one Sage-cell `CellSessionID` (a page of the Sage cell's front end) may hold at once (then 429 `too_many_kernels_for_cell_session`, as the Sage cell answers)"),
		opt("jupyter-idle-timeout", &o.jupyterIdle, gw.JupyterIdleTimeout, "Jupyter API kernels end after this long idle with no client connected"),
		opt("detach-grace", &o.detachGrace, gw.DetachGrace, "how long a one-shot session outlives its last client, so a dropped websocket can reconnect"),
		opt("header-timeout", &o.headerTimeout, gw.HeaderTimeout, "a request's headers must arrive within this long of its start, or the connection is closed"),
		opt("body-timeout", &o.bodyTimeout, gw.BodyTimeout, "a request's body must arrive within this long of its headers (then 400 and the connection is closed); upgraded websockets and held long-polls are not cut"),
		opt("idle-timeout", &o.idleTimeout, gw.IdleTimeout, "a keep-alive connection with no request in flight is closed after this long"),
		opt("max-connections-per-address", &o.connsPerAddr, gw.MaxConnsPerAddr, "open TCP connections one peer address (an IPv6 /64) may hold; the next is answered 429 and closed. With `--trust-proxy`, loopback, private and link-local peers (the proxy) are not capped"),
		opt("permalinks-per-minute", &o.permalinksPerMinute, gw.PermalinksPerMinute, "`POST /permalink` one address may make a minute, in bursts of as many (then 429 with Retry-After); executions record theirs regardless"),
		opt("file-ttl", &o.fileTTL, time.Duration(0), "remove files kernels wrote (and their GridFS chunks) this long after upload, checked every 10 minutes; `0`: keep them"),
		opt("max-storage-mb", &o.maxStorageMB, st.Files.MaxTotalBytes>>20, "cap in MiB on all stored kernel files together: once reached, new files are not uploaded (the client is told why) until `--file-ttl` or the operator makes room; `0`: no cap"),
		opt("upload-mb-per-address-hour", &o.uploadMBPerAddr, gw.Storage.UploadQuota.BytesPerWindow>>20, "MiB of kernel files the sessions of one client address (an IPv6 /64) may upload together over the last hour: files over it are not uploaded (the client is told why, per file) and computations go on; counted per instance; `0`: no cap"),
		opt("upload-files-per-address-hour", &o.uploadFilesPerAddr, gw.Storage.UploadQuota.FilesPerWindow, "kernel files the sessions of one client address may upload together over the last hour, as `--upload-mb-per-address-hour`; `0`: no cap"),
		opt("store-results", &o.storeResults, true, "keep what each execution showed (outputs, widget state) with its permalink, so a shared link opens with its result and no kernel; `false`: permalinks keep only code and interacts"),
		opt("result-max-kb", &o.resultKB, gw.Storage.ResultBudget>>10, "inline size in KiB of one stored result (outputs and widget state); what goes over is left out, with a notice in the result"),
		opt("max-message-mb", &o.maxMessageMB, kp.Kernel.MaxMessageBytes>>20, "largest message in MiB from a client (websocket frame, HTTP body; then an error or 413) or from a kernel (then dropped, and its clients told)"),
		opt("kernel-message-budget-mb", &o.kernelMessageMB, int64(kernelpool.DefaultMessageBudgetBytes>>20), "MiB of kernel messages the whole process holds at once, all kernels and sessions together (replays of output, messages on their way, and what the websocket, long-poll and SockJS transports hold for each client until it is written): when full, old output that clients were to be replayed is let go first, then new iopub output is dropped (clients told) and replies wait, and a client whose copy finds no room is skipped for that message (told); at least twice `--max-message-mb` (a message at the cap and its encoded frame for one client); `0`: no bound"),
		opt("advertise-url", &o.advertiseURL, cl.AdvertiseURL, "URL other instances reach this one at directly (not through the balancer), e.g. `http://10.0.0.5:8888/`; setting it joins the cluster of instances sharing `--mongo-uri` (README: Running several instances)").
			documented("unset: one instance alone"),
		opt("cluster-secret", &o.clusterSecret, "", fmt.Sprintf("secret shared by every instance of a cluster, which signs the requests they forward to each other (at least %d bytes; required with `--advertise-url`; prefer the environment variable)", cluster.MinSecretBytes)),
		opt("instance-id", &o.instanceID, cl.InstanceID, "this instance's name in the cluster (letters, digits, `.`, `_`, `-`); a fixed one lets a restarted instance take over its crashed predecessor's records at once").
			documented("host name and a random suffix"),
		opt("cluster-heartbeat", &o.clusterHeartbeat, cl.Heartbeat, "how often an instance renews its record in the cluster registry and reads the others'"),
		opt("cluster-expiry", &o.clusterExpiry, cl.Expiry, "an instance silent this long is dead to the others, and its sessions end for their clients (at least two heartbeats)"),
		opt("log-level", &o.logLevel, "info", "log level: `debug`, `info`, `warn` or `error`"),
		opt("log-format", &o.logFormat, "console", "log format: `console` (for people) or `json` (for log collectors)"),
		opt("drain-timeout", &o.drainTimeout, 20*time.Second, "on SIGTERM: refuse new sessions at once (/readyz 503) and let the live ones run until they end or this long, then end those left and write queued permalinks within "+shutdownGrace.String()+" more (a second SIGTERM or ^C exits at once; 0 ends sessions at once)"),
	}
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("cellgate serve", flag.ContinueOnError)
	for _, s := range settings(o) {
		s.define(fs, plain(s.help))
	}
	return fs
}

// plain is markdown help as a terminal shows it.
func plain(help string) string { return strings.ReplaceAll(help, "`", "") }

// shortDuration drops the zero minutes and seconds that
// time.Duration.String adds ("1h" rather than "1h0m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func defaultRuntimeDir() string {
	if os.Geteuid() == 0 {
		return "/run/cellgate"
	}
	return fmt.Sprintf("%s/cellgate-%d", os.TempDir(), os.Getuid())
}

// envName is the variable that sets a flag.
func envName(flagName string) string {
	return "CELLGATE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseOptions reads flags, falling back to CELLGATE_* variables.
func parseOptions(args []string, getenv func(string) string) (options, error) {
	var o options
	fs := newFlagSet(&o)
	fs.Usage = func() { usage(fs.Output()) }
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
			}
			set[f.Name] = true
		}
	})
	if err != nil {
		return o, err
	}
	if o.configFile == "" {
		return o, o.validate()
	}
	values, err := readConfigFile(o.configFile)
	if err != nil {
		return o, err
	}
	for name, v := range values {
		f := fs.Lookup(name)
		switch {
		case f == nil || name == "config":
			return o, fmt.Errorf("%s: unknown setting %q (settings are the flag names of cellgate serve --help)", o.configFile, name)
		case set[name]:
			continue // flags and environment win over the file
		}
		if e := f.Value.Set(v); e != nil {
			return o, fmt.Errorf("%s: %s = %q: %w", o.configFile, name, v, e)
		}
	}
	return o, o.validate()
}

// validate refuses settings that would make no sense at run time, naming
// the flag.
func (o options) validate() error {
	type limit struct {
		name  string
		value int64
	}
	// Zero is refused rather than read as "the default": a flag not set
	// already holds its default, and the packages would quietly turn a zero
	// into theirs. (--max-kernels-per-address alone means something by 0:
	// its default depends on --max-kernels.)
	positive := []limit{
		{"max-kernels", int64(o.maxKernels)}, {"max-message-mb", o.maxMessageMB},
		{"max-kernels-per-client", int64(o.perClient)}, {"max-kernels-per-cell-session", int64(o.perCellSession)},
		{"kernel-time-per-address", int64(o.kernelTime)}, {"kernel-time-window", int64(o.kernelWindow)},
		{"drain-timeout", int64(o.drainTimeout)}, {"lease-timeout", int64(o.leaseTimeout)},
		{"service-timeout", int64(o.serviceTimeout)}, {"poll-wait", int64(o.pollWait)},
		{"max-timeout", int64(o.maxTimeout)}, {"max-lifespan", int64(o.maxLifespan)},
		{"jupyter-idle-timeout", int64(o.jupyterIdle)}, {"detach-grace", int64(o.detachGrace)},
		{"header-timeout", int64(o.headerTimeout)}, {"body-timeout", int64(o.bodyTimeout)},
		{"idle-timeout", int64(o.idleTimeout)}, {"max-connections-per-address", int64(o.connsPerAddr)},
		{"kernel-memory-mb", o.kernelMemory}, {"kernel-disk-mb", o.kernelDisk},
		{"kernel-processes", int64(o.kernelProcs)}, {"kernel-lifespan", int64(o.kernelLifespan)},
	}
	for _, p := range positive {
		if p.value <= 0 {
			return fmt.Errorf("--%s must be positive", p.name)
		}
	}
	if o.kernelCPU < time.Second {
		return fmt.Errorf("--kernel-cpu %v is under 1s", o.kernelCPU)
	}
	if !(o.kernelCPUShare >= 0 && o.kernelCPUShare <= 4096) {
		return fmt.Errorf("--kernel-cpu-share %v: want cores, or 0 for no share", o.kernelCPUShare)
	}
	if o.maxMessageMB > 1024 {
		return fmt.Errorf("--max-message-mb %d is over 1024", o.maxMessageMB)
	}
	if o.kernelMessageMB < 0 {
		return errors.New("--kernel-message-budget-mb must not be negative (0: no bound)")
	}
	if o.kernelMessageMB != 0 && o.kernelMessageMB < 2*o.maxMessageMB {
		return fmt.Errorf("--kernel-message-budget-mb %d is below twice --max-message-mb %d: a message at the cap and its frame for a client could never be held together", o.kernelMessageMB, o.maxMessageMB)
	}
	if o.uploadMBPerAddr < 0 || o.uploadFilesPerAddr < 0 {
		return errors.New("--upload-mb-per-address-hour and --upload-files-per-address-hour must not be negative (0: no cap)")
	}
	if o.perAddress < 0 {
		return fmt.Errorf("--max-kernels-per-address must not be negative (0: a quarter of --max-kernels)")
	}
	if o.fork != "on" && o.fork != "off" {
		return fmt.Errorf("--fork %q: want on or off", o.fork)
	}
	if o.dbConnectRetry < 0 {
		return fmt.Errorf("--db-connect-retry must not be negative")
	}
	if o.poolMemoryMB < 0 {
		return fmt.Errorf("--pool-memory-mb must not be negative")
	}
	if _, err := kernelpool.ParseQueueMode(o.leaseQueue); err != nil {
		return fmt.Errorf("--lease-queue: %w", err)
	}
	return o.validateCluster()
}

// validateCluster checks the cluster's settings when --advertise-url joins one.
func (o options) validateCluster() error {
	if o.advertiseURL == "" {
		if o.clusterSecret != "" || o.instanceID != "" {
			return errors.New("--cluster-secret and --instance-id need --advertise-url (which joins a cluster)")
		}
		return nil
	}
	if len(o.clusterSecret) < cluster.MinSecretBytes {
		return fmt.Errorf("--advertise-url needs --cluster-secret (or %s) of at least %d bytes, the same on every instance", envName("cluster-secret"), cluster.MinSecretBytes)
	}
	if o.clusterHeartbeat <= 0 || o.clusterExpiry < 2*o.clusterHeartbeat {
		return fmt.Errorf("--cluster-expiry %v must be at least two --cluster-heartbeat (%v)", o.clusterExpiry, o.clusterHeartbeat)
	}
	return nil
}

// gatewayConfig is what the settings say of the gateway; the caller adds
// what no flag sets (log, storage, metrics).
func (o options) gatewayConfig() gateway.Config {
	cfg := gateway.DefaultConfig()
	cfg.PublicURL, cfg.Token, cfg.TrustProxy = o.publicURL, o.token, o.trustProxy
	cfg.AllowOrigins = splitList(o.allowOrigin)
	cfg.DefaultKernel, cfg.SageCellDefaultKernel = o.defaultKernel, o.sageDefault
	cfg.MaxKernelsPerCellSession = o.perCellSession
	cfg.PermalinksPerMinute = o.permalinksPerMinute
	cfg.MaxMessageBytes = o.maxMessageMB << 20
	cfg.MaxTimeout, cfg.MaxLifespan = o.maxTimeout, o.maxLifespan
	cfg.LeaseTimeout, cfg.ServiceTimeout, cfg.PollWait = o.leaseTimeout, o.serviceTimeout, o.pollWait
	cfg.MaxKernelsPerAddr, cfg.MaxKernelsPerClient = o.perAddress, o.perClient
	if o.perAddress == 0 {
		cfg.MaxKernelsPerAddr = gateway.FairShare(o.maxKernels)
	}
	cfg.KernelTimePerAddr, cfg.KernelTimeWindow = o.kernelTime, o.kernelWindow
	cfg.JupyterIdleTimeout, cfg.DetachGrace = o.jupyterIdle, o.detachGrace
	cfg.HeaderTimeout, cfg.BodyTimeout, cfg.IdleTimeout = o.headerTimeout, o.bodyTimeout, o.idleTimeout
	cfg.MaxConnsPerAddr = o.connsPerAddr
	return cfg
}

// poolConfig is what the settings say of the kernel pool; the caller adds
// the kernelspecs, the launcher, the directories and the log.
func (o options) poolConfig() (kernelpool.Config, error) {
	cfg := kernelpool.DefaultConfig()
	ready, err := parsePool(o.pool)
	if err != nil {
		return cfg, err
	}
	cfg.Ready, cfg.MaxKernels = ready, o.maxKernels
	cfg.MemoryBudget = o.poolMemoryMB << 20
	if o.poolMemoryMB == 0 {
		cfg.MemoryBudget = -1 // no growth; the pool's zero would mean its default
	}
	if cfg.Queue, err = kernelpool.ParseQueueMode(o.leaseQueue); err != nil {
		return cfg, err
	}
	cfg.Kernel.MaxMessageBytes = o.maxMessageMB << 20
	cfg.Kernel.MessageBudget = kernelpool.NewMessageBudget(o.kernelMessageMB << 20)
	return cfg, nil
}

// sandboxConfig is what the settings say of the bwrap sandbox.
func (o options) sandboxConfig() sandbox.Config {
	cfg := sandbox.DefaultConfig()
	cfg.CPUTime, cfg.Memory, cfg.Disk = o.kernelCPU, o.kernelMemory<<20, o.kernelDisk<<20
	cfg.Processes, cfg.Lifespan = o.kernelProcs, o.kernelLifespan
	cfg.CPUShare = o.kernelCPUShare
	cfg.Fork, cfg.ForkMax = o.fork == "on", o.forkMax
	return cfg
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// readConfigFile reads "name = value" lines; # starts a comment.
func readConfigFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	values := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want name = value", path, i+1)
		}
		name = strings.TrimPrefix(strings.TrimSpace(name), "--")
		value = strings.Trim(strings.TrimSpace(value), `"`)
		values[name] = value
	}
	return values, nil
}

// usage is cellgate serve --help, in the table's order.
func usage(out io.Writer) {
	fmt.Fprintln(out, "Usage: cellgate serve [flags]")
	fmt.Fprintln(out, "\nEvery flag can also be set by the environment variable shown beside it, or in the --config file;")
	fmt.Fprintln(out, "a flag wins over the environment, which wins over the file.")
	fmt.Fprintln(out, "\nFlags:")
	var o options
	fs := newFlagSet(&o)
	for _, s := range settings(&o) {
		kind, _ := flag.UnquoteUsage(fs.Lookup(s.name))
		fmt.Fprintf(out, "  %s\n    \t%s", strings.TrimSpace("--"+s.name+" "+kind), plain(s.help))
		switch {
		case s.def != "" && s.def != "false":
			fmt.Fprintf(out, " (default %q)", s.def)
		case s.docDefault != "":
			fmt.Fprintf(out, " (default: %s)", plain(s.docDefault))
		}
		fmt.Fprintf(out, " [$%s]\n", envName(s.name))
	}
}

// optionsMarkdown is README.md's table of settings.
func optionsMarkdown() string {
	var b strings.Builder
	b.WriteString("| flag | default | environment | meaning |\n|---|---|---|---|\n")
	var o options
	for _, s := range settings(&o) {
		def := s.docDefault
		switch {
		case def != "":
		case s.def == "":
			def = "unset"
		default:
			def = "`" + s.def + "`"
		}
		fmt.Fprintf(&b, "| `--%s` | %s | `%s` | %s |\n", s.name, def, envName(s.name), strings.ReplaceAll(s.help, "|", `\|`))
	}
	return b.String()
}

// poolAuto is --pool's default: kernelpool.AutoReady, once the
// kernelspecs and the launcher are known.
const poolAuto = "auto"

// parsePool reads "python3=2,sagemath=1"; "auto" is nil, what the pool
// reads as kernelpool.AutoReady.
func parsePool(s string) (map[string]int, error) {
	if strings.TrimSpace(s) == poolAuto {
		return nil, nil
	}
	sizes := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, n, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("--pool: %q is not name=count", part)
		}
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 {
			return nil, fmt.Errorf("--pool: bad count in %q", part)
		}
		sizes[strings.ToLower(strings.TrimSpace(name))] = count
	}
	return sizes, nil
}

// isLoopback reports whether a listen address only accepts local clients.
func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
