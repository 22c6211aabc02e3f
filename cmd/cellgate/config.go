package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// options are cellgate serve's settings. Every flag can also be set by the
// environment variable CELLGATE_<FLAG> (upper case, '-' as '_'); a flag on
// the command line wins.
type options struct {
	configFile     string
	listen         string
	publicURL      string
	dataDir        string
	runtimeDir     string
	mongoURI       string
	pool           string
	maxKernels     int
	sandbox        string
	allowUnsafe    bool
	token          string
	allowOrigin    string
	trustProxy     bool
	defaultKernel  string
	maxTimeout     time.Duration
	maxLifespan    time.Duration
	leaseTimeout   time.Duration
	serviceTimeout time.Duration
	pollWait       time.Duration
	logLevel       string
	logFormat      string
	drainTimeout   time.Duration
	database       string
	dbConnectRetry time.Duration
	kernelMemory   int64
	kernelCPU      time.Duration
	kernelDisk     int64
	kernelProcs    int
	kernelLifespan time.Duration
	maxMessageMB   int64
	perAddress     int
	perClient      int
	jupyterIdle    time.Duration
	detachGrace    time.Duration
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("cellgate serve", flag.ContinueOnError)
	fs.StringVar(&o.configFile, "config", "", "optional file of name = value lines (flag names); flags and CELLGATE_* variables win over it")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8888", "address to serve HTTP on")
	fs.StringVar(&o.publicURL, "public-url", "", "base URL clients use to reach cellgate (for ws_url and file links); default: derived from each request")
	fs.StringVar(&o.dataDir, "data-dir", "./data", "directory for the embedded database and kernel working directories")
	fs.StringVar(&o.runtimeDir, "runtime-dir", defaultRuntimeDir(), "short directory for kernel connection files and ipc sockets")
	fs.StringVar(&o.mongoURI, "mongo-uri", "", "MongoDB URI; empty starts the embedded database under --data-dir")
	fs.StringVar(&o.pool, "pool", "python3=2", "ready kernels to keep per kernelspec, e.g. python3=2,sagemath=1")
	fs.IntVar(&o.maxKernels, "max-kernels", 16, "cap on all kernels: ready, starting and in use")
	fs.StringVar(&o.sandbox, "sandbox", "bwrap", "kernel isolation: bwrap, or none (development only)")
	fs.BoolVar(&o.allowUnsafe, "allow-unsandboxed-public", false, "allow --sandbox=none on a non-loopback address (dangerous)")
	fs.StringVar(&o.token, "token", "", "token required by the Jupyter Server API (/api); empty: no auth")
	fs.StringVar(&o.allowOrigin, "allow-origin", "*", "comma-separated origins allowed to embed cells, or *")
	fs.BoolVar(&o.trustProxy, "trust-proxy", false, "take client addresses from X-Forwarded-For (behind a reverse proxy)")
	fs.StringVar(&o.defaultKernel, "default-kernel", "python3", "kernelspec used when a request names none")
	fs.DurationVar(&o.maxTimeout, "max-timeout", time.Hour, "longest idle timeout a client or an interact may ask for")
	fs.DurationVar(&o.maxLifespan, "max-lifespan", 4*time.Hour, "hard cap on any session's life")
	fs.DurationVar(&o.leaseTimeout, "lease-timeout", 10*time.Second, "how long a request waits for a kernel when none is ready")
	fs.DurationVar(&o.serviceTimeout, "service-timeout", 30*time.Second, "wall-clock limit of one /service computation")
	fs.DurationVar(&o.pollWait, "poll-wait", 25*time.Second, "how long a long-poll request is held open")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "console", "console or json")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 20*time.Second, "on SIGTERM, how long to wait for sessions to end")
	fs.StringVar(&o.database, "database", "cellgate", "MongoDB database name")
	fs.DurationVar(&o.dbConnectRetry, "db-connect-retry", 0, "keep retrying an unreachable database at start-up this long (0: fail at once)")
	fs.Int64Var(&o.kernelMemory, "kernel-memory-mb", 0, "sandbox: address-space limit per kernel process in MiB (0: sandbox default, 4096)")
	fs.DurationVar(&o.kernelCPU, "kernel-cpu", 0, "sandbox: CPU time limit per kernel process (0: sandbox default, 10m)")
	fs.Int64Var(&o.kernelDisk, "kernel-disk-mb", 0, "sandbox: size of a kernel's writable space in MiB (0: sandbox default, 128)")
	fs.IntVar(&o.kernelProcs, "kernel-processes", 0, "sandbox: processes and threads per kernel (0: sandbox default, 64)")
	fs.DurationVar(&o.kernelLifespan, "kernel-lifespan", 0, "sandbox: wall-clock life of a kernel process (0: sandbox default, 6h)")
	fs.Int64Var(&o.maxMessageMB, "max-message-mb", 16, "largest message in MiB from a client (websocket frame, HTTP body) or from a kernel; larger ones are refused or dropped")
	fs.IntVar(&o.perAddress, "max-kernels-per-address", 16, "sessions one remote address may hold at once (then 429)")
	fs.IntVar(&o.perClient, "max-kernels-per-client", 4, "sessions one client_id may hold at once (then 429)")
	fs.DurationVar(&o.jupyterIdle, "jupyter-idle-timeout", 30*time.Minute, "Jupyter API kernels end after this long idle with no client connected")
	fs.DurationVar(&o.detachGrace, "detach-grace", 10*time.Second, "how long a one-shot session outlives its last client, so a dropped websocket can reconnect")
	return fs
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
	fs.Usage = func() { usage(fs, fs.Output()) }
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
	type setting struct {
		name  string
		value int64
	}
	positive := []setting{
		{"max-kernels", int64(o.maxKernels)}, {"max-message-mb", o.maxMessageMB},
		{"max-kernels-per-address", int64(o.perAddress)}, {"max-kernels-per-client", int64(o.perClient)},
		{"drain-timeout", int64(o.drainTimeout)}, {"lease-timeout", int64(o.leaseTimeout)},
		{"service-timeout", int64(o.serviceTimeout)}, {"poll-wait", int64(o.pollWait)},
		{"max-timeout", int64(o.maxTimeout)}, {"max-lifespan", int64(o.maxLifespan)},
		{"jupyter-idle-timeout", int64(o.jupyterIdle)},
	}
	for _, p := range positive {
		if p.value <= 0 {
			return fmt.Errorf("--%s must be positive", p.name)
		}
	}
	if o.maxMessageMB > 1024 {
		return fmt.Errorf("--max-message-mb %d is over 1024", o.maxMessageMB)
	}
	for _, p := range []setting{{"kernel-memory-mb", o.kernelMemory}, {"kernel-disk-mb", o.kernelDisk}, {"kernel-processes", int64(o.kernelProcs)},
		{"kernel-cpu", int64(o.kernelCPU)}, {"kernel-lifespan", int64(o.kernelLifespan)}, {"detach-grace", int64(o.detachGrace)}} {
		if p.value < 0 {
			return fmt.Errorf("--%s must not be negative", p.name)
		}
	}
	return nil
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

func usage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprintln(out, "Usage: cellgate serve [flags]")
	fmt.Fprintln(out, "\nEvery flag can also be set by the environment variable shown beside it, or in the --config file;")
	fmt.Fprintln(out, "a flag wins over the environment, which wins over the file.")
	fmt.Fprintln(out, "\nFlags:")
	fs.VisitAll(func(f *flag.Flag) {
		kind, text := flag.UnquoteUsage(f)
		fmt.Fprintf(out, "  %s\n    \t%s", strings.TrimSpace("--"+f.Name+" "+kind), text)
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			fmt.Fprintf(out, " (default %q)", f.DefValue)
		}
		fmt.Fprintf(out, " [$%s]\n", envName(f.Name))
	})
}

// parsePool reads "python3=2,sagemath=1".
func parsePool(s string) (map[string]int, error) {
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
