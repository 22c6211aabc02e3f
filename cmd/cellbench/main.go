// Command cellbench is the load driver behind `make bench`: it starts a real
// cellgate (bin/cellgate serve, sandboxed, embedded database, on a free
// loopback port), drives it over HTTP, websockets and long-polling, runs the
// same @jupyterlab/services script against cellgate and Debian's Jupyter
// Server, folds in the Go benchmarks that scripts/bench.sh ran just before,
// prints one table and writes bench/results.json and bench/README.md.
//
//	go run ./cmd/cellbench -cellgate bin/cellgate -gobench /tmp/gobench.txt
//
// Every figure comes from this run; nothing is typed in. Paths are relative
// to the repository root, where scripts/bench.sh runs it.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

type options struct {
	cellgate     string
	gobenchFile  string
	outDir       string
	jsScript     string
	nodeModules  string
	pool         string
	sessions     int
	backToBack   int
	rounds       int
	jsKernels    int
	jsExecutes   int
	serviceDur   time.Duration
	idleSessions int
	permalinks   int
	fileRounds   int
	coldStarts   int
	burstSizes   string
	skip         string
	// The cluster phase's samples.
	clusterRounds, clusterSessions, clusterStops int
}

func main() {
	var o options
	flag.StringVar(&o.cellgate, "cellgate", "bin/cellgate", "the cellgate binary to benchmark")
	flag.StringVar(&o.gobenchFile, "gobench", "", "output of the Go benchmarks (go test -bench) to fold into the report")
	flag.StringVar(&o.outDir, "out", "bench", "where results.json and README.md are written")
	flag.StringVar(&o.jsScript, "jsbench", "bench/jsbench.js", "the @jupyterlab/services timing script")
	flag.StringVar(&o.nodeModules, "node-modules", "gateway/testdata/jupyterlab/node_modules", "node_modules with @jupyterlab/services and ws")
	flag.StringVar(&o.pool, "pool", "python3=4", "cellgate --pool (python3's part of the deployed default, auto, with forked kernels; auto also keeps a forked SageMath kernel ready)")
	flag.IntVar(&o.sessions, "sessions", 30, "warm-pool sessions to time")
	flag.IntVar(&o.backToBack, "back-to-back", 10, "unpaced sessions to time")
	flag.IntVar(&o.rounds, "rounds", 300, "execute rounds (one execution per transport each)")
	flag.IntVar(&o.jsKernels, "js-kernels", 5, "kernels per server for the @jupyterlab/services comparison")
	flag.IntVar(&o.jsExecutes, "js-executes", 40, "executions per kernel for the @jupyterlab/services comparison")
	flag.DurationVar(&o.serviceDur, "service-duration", 10*time.Second, "how long each /service concurrency level runs")
	flag.IntVar(&o.idleSessions, "idle-sessions", 100, "idle sessions for the memory figures (each a real sandboxed kernel)")
	flag.IntVar(&o.permalinks, "permalinks", 300, "permalinks to create and look up")
	flag.IntVar(&o.fileRounds, "file-rounds", 3, "10 MB files to upload and fetch")
	flag.IntVar(&o.coldStarts, "cold-starts", 6, "cold starts per launcher (sandboxed and not)")
	flag.StringVar(&o.burstSizes, "bursts", "20,50", "sizes of the bursts of concurrent POST /kernel and /service, comma-separated")
	flag.IntVar(&o.clusterRounds, "cluster-rounds", 200, "cluster: execute rounds on one session, through its owner and through another instance each")
	flag.IntVar(&o.clusterSessions, "cluster-sessions", 20, "cluster: new sessions through haproxy, with one instance and with three each")
	flag.IntVar(&o.clusterStops, "cluster-stops", 3, "cluster: instances killed (SIGKILL), and as many stopped (SIGTERM), each restarted after")
	flag.StringVar(&o.skip, "skip", "", "comma-separated phases to skip: "+strings.Join(append(serverPhases(), "cluster"), ","))
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code := run(ctx, o)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, o options) int {
	began := time.Now()
	rec := &recorder{}
	rep := Report{
		Generated: began.UTC().Format(time.RFC3339), GoVersion: runtime.Version(),
		Host: hostInfo(), Cellgate: map[string]string{}, Versions: versions(o),
	}
	rep.GitCommit, rep.GitDirty = gitInfo()

	tmp, err := os.MkdirTemp("", "cellbench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cellbench:", err)
		return 1
	}
	defer func() {
		if err := os.RemoveAll(tmp); err != nil {
			fmt.Fprintln(os.Stderr, "cellbench: could not remove", tmp+":", err)
		}
	}()
	// Kernels run under their own uids and must traverse to their dirs.
	_ = os.Chmod(tmp, 0o711)

	e := &env{opts: o, rec: rec, tmp: tmp}
	if o.gobenchFile != "" {
		f, err := os.Open(o.gobenchFile)
		if err != nil {
			rec.problem("Go benchmarks: %v", err)
		} else {
			e.gobench = parseGoBench(f)
			f.Close()
		}
	}
	rep.GoBenchmarks = e.gobench
	e.goRows()

	skip := strings.Split(o.skip, ",")
	if !allIn(serverPhases(), skip) {
		if err := e.withServer(ctx, rep.Cellgate); err != nil {
			rec.problem("%v", err)
		}
	}
	// Alone on the machine: the single server has stopped.
	if !slices.Contains(skip, "cluster") && ctx.Err() == nil {
		e.runPhase(ctx, "cluster", e.phaseCluster, 15*time.Minute)
		if e.clusterShown != "" {
			rep.Cellgate["cluster"] = e.clusterShown
		}
	}

	rep.Rows = orderRows(rec.rows)
	rep.Problems = rec.problems
	if rep.Problems == nil {
		rep.Problems = []string{}
	}
	rep.DurationSec = round(time.Since(began).Seconds())

	text := table(rep.Rows, false)
	fmt.Printf("\ncellgate bench — %s — commit %s%s — %s CPUs, load %s — %.0f s\n", rep.Generated, short(rep.GitCommit),
		map[bool]string{true: " (dirty tree)", false: ""}[rep.GitDirty], rep.Host["cpus"], rep.Host["loadavg_at_start"], rep.DurationSec)
	fmt.Print(text)
	if len(rep.Problems) > 0 {
		fmt.Println("\nProblems:")
		for _, p := range rep.Problems {
			fmt.Println("  -", p)
		}
	}
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "cellbench:", err)
		return 1
	}
	if err := writeJSON(filepath.Join(o.outDir, "results.json"), rep); err != nil {
		fmt.Fprintln(os.Stderr, "cellbench:", err)
		return 1
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "README.md"), []byte(readme(rep)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "cellbench:", err)
		return 1
	}
	fmt.Printf("\nwrote %s and %s\n", filepath.Join(o.outDir, "results.json"), filepath.Join(o.outDir, "README.md"))
	if len(rep.Problems) > 0 {
		return 1
	}
	return 0
}

// withServer starts cellgate, runs the phases against it and stops it.
func (e *env) withServer(ctx context.Context, info map[string]string) error {
	o := e.opts
	poolTotal := 0
	for _, part := range strings.Split(o.pool, ",") {
		if _, n, ok := strings.Cut(part, "="); ok {
			v, _ := strconv.Atoi(n)
			poolTotal += v
		}
	}
	e.poolTotal = poolTotal
	e.maxKernels = max(40, o.idleSessions+poolTotal+8)
	gw, a, shown, err := e.startCellgate("cellgate", nil)
	if err != nil {
		return err
	}
	info["args"] = shown
	info["note"] = "defaults otherwise; --max-kernels raised for the idle-session and burst figures; --trust-proxy so " +
		"that simulated readers (X-Forwarded-For from 198.18.0.0/15) are not all one address under the per-address cap"
	e.gw, e.api = gw, a
	defer e.stopServer(gw)
	e.rec.value(secPool, "cellgate_start_ready", "cellgate process start → /readyz 200", "ms", ms(gw.ready), "",
		"embedded FerretDB started, one sandboxed kernel ready")
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	time.Sleep(time.Second)
	startRSS, err := statusKiB(gw.pid(), "VmRSS:")
	if err != nil {
		return err
	}

	e.inproc, err = newInproc(filepath.Join(e.tmp, "ipk"))
	if err != nil {
		return fmt.Errorf("in-process kernels: %w", err)
	}
	defer e.inproc.close()

	phases := []struct {
		name    string
		run     func(context.Context) error
		timeout time.Duration // 5 min if zero
	}{
		{"coldstart", e.phaseColdStart, 0},
		{"sessions", e.phaseSessions, 0},
		{"execute", e.phaseExecute, 0},
		{"jupyterlab", e.phaseJupyterLab, 0},
		// After the execute rounds: its pages grow the elastic pool for a
		// minute, and the kernels it starts meanwhile would be in the
		// execute figures (4-5 ms more at p50 when it ran before them).
		{"page", e.phasePage, 0},
		{"service", e.phaseService, 0},
		{"refill", e.phaseRefill, 0},
		// Waits about a minute between bursts for the pool to shrink.
		{"burst", e.phaseBurst, 20 * time.Minute},
		{"permalinks", e.phasePermalinks, 0},
		{"stored", e.phaseStored, 10 * time.Minute},
		{"files", e.phaseFiles, 0},
		{"memory", func(ctx context.Context) error { return e.phaseMemory(ctx, startRSS) }, 0},
	}
	skip := strings.Split(o.skip, ",")
	for _, p := range phases {
		if slices.Contains(skip, p.name) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.runPhase(ctx, p.name, p.run, p.timeout)
		select {
		case <-gw.exited:
			return fmt.Errorf("cellgate exited during phase %s; log:\n%s", p.name, gw.logTail())
		default:
		}
	}
	return nil
}

// serverPhases are the phases run against one cellgate (withServer), in order; the cluster
// phase runs its own instances after it.
func serverPhases() []string {
	return []string{"coldstart", "sessions", "execute", "jupyterlab", "page", "service", "refill", "burst", "permalinks", "stored", "files", "memory"}
}

// allIn tells whether every one of names is in set.
func allIn(names, set []string) bool {
	for _, n := range names {
		if !slices.Contains(set, n) {
			return false
		}
	}
	return true
}

// runPhase runs one phase with its time limit (5 min if zero), reporting its error as a problem.
func (e *env) runPhase(ctx context.Context, name string, run func(context.Context) error, timeout time.Duration) {
	fmt.Fprintf(os.Stderr, "cellbench: %s: %s ...\n", time.Now().Format("15:04:05"), name)
	began := time.Now()
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	phaseCtx, cancel := context.WithTimeout(ctx, timeout)
	err := run(phaseCtx)
	cancel()
	if err != nil {
		e.rec.problem("phase %s: %v", name, err)
	}
	fmt.Fprintf(os.Stderr, "cellbench: %s took %s\n", name, time.Since(began).Round(100*time.Millisecond))
}

// startCellgate starts bin/cellgate serve as the bench deploys it (name
// names its directories and log; extra flags are added) and waits for
// /readyz. shown is its command line as the report prints it.
func (e *env) startCellgate(name string, extra []string) (gw *server, a *api, shown string, err error) {
	o := e.opts
	port, err := freePort()
	if err != nil {
		return nil, nil, "", err
	}
	dir := filepath.Join(e.tmp, name)
	token := "cellbench-" + randomHex(12)
	args := []string{"serve",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--data-dir", filepath.Join(dir, "data"),
		"--runtime-dir", filepath.Join(dir, "run"),
		"--sandbox", "bwrap",
		"--pool", o.pool,
		"--max-kernels", strconv.Itoa(e.maxKernels),
		"--trust-proxy",
		"--log-level", "warn", "--log-format", "json",
	}
	args = append(args, extra...)
	shown = strings.Join(args, " ") + " --token <random>"
	shown = strings.ReplaceAll(shown, dir, "$TMPDIR")
	shown = strings.Replace(shown, fmt.Sprintf("127.0.0.1:%d", port), "127.0.0.1:<free port>", 1)
	args = append(args, "--token", token)
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o711); err != nil {
		return nil, nil, "", err
	}
	// Kernels run under their own uids and must traverse to their dirs.
	_ = os.Chmod(dir, 0o711)
	cmd := exec.Command(o.cellgate, args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CELLGATE_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	gw, err = startProcess(name, filepath.Join(dir, name+".log"), cmd)
	if err != nil {
		return nil, nil, "", err
	}
	a = &api{base: fmt.Sprintf("http://127.0.0.1:%d/", port), token: token, http: newHTTPClient()}
	if err := gw.waitReady(a.base+"readyz", nil, 2*time.Minute); err != nil {
		e.stopServer(gw)
		return nil, nil, "", err
	}
	return gw, a, shown, nil
}

// stopServer stops a cellgate gracefully and checks that none of its
// kernels outlived it.
func (e *env) stopServer(gw *server) {
	before, _ := descendants(gw.pid())
	began := time.Now()
	if err := gw.stop(60 * time.Second); err != nil {
		e.rec.problem("%v", err)
	}
	if code := gw.cmd.ProcessState.ExitCode(); code != 0 {
		e.rec.problem("%s exited with status %d after SIGTERM; log:\n%s", gw.name, code, gw.logTail())
	}
	fmt.Fprintf(os.Stderr, "cellbench: %s stopped in %s\n", gw.name, time.Since(began).Round(10*time.Millisecond))
	dir := filepath.Join(e.tmp, gw.name)
	time.Sleep(500 * time.Millisecond)
	var left []string
	for _, p := range before {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.pid)); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid)); len(st) > 0 && !strings.Contains(string(st), ") Z ") {
				left = append(left, fmt.Sprintf("%d (%s)", p.pid, p.comm))
			}
		}
	}
	if len(left) > 0 {
		e.rec.problem("processes of %s still running after it stopped: %s", gw.name, strings.Join(left, ", "))
	}
	// Kernel directories and sandbox mounts cellgate should have removed.
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		n := 0
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				n++
			}
		}
		if n > 0 {
			e.rec.problem("%d mounts under %s's data/runtime directories left after it stopped", n, gw.name)
			// Clear them as cellgate's next start would: the sandbox's
			// start-up sweep releases what no live gateway holds.
			if _, err := sandbox.NewBwrap(sandbox.DefaultConfig()); err != nil {
				e.rec.problem("sandbox sweep after cellgate stopped: %v", err)
			}
		}
	}
	if dirs, err := os.ReadDir(filepath.Join(dir, "data", "kernels")); err == nil && len(dirs) > 0 {
		e.rec.problem("%d kernel working directories left in --data-dir after %s stopped", len(dirs), gw.name)
	}
	if logData, err := os.ReadFile(gw.logPath); err == nil {
		// Keep the server's warnings with the results of a failed run.
		if n := strings.Count(string(logData), `"level":"error"`); n > 0 {
			e.rec.problem("%s logged %d errors; last lines:\n%s", gw.name, n, gw.logTail())
		}
	}
}

// orderRows sorts rows by section, keeping their order within a section.
func orderRows(rows []Row) []Row {
	out := slices.Clone(rows)
	slices.SortStableFunc(out, func(a, b Row) int {
		return slices.Index(sectionOrder, a.Section) - slices.Index(sectionOrder, b.Section)
	})
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func gitInfo() (string, bool) {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown", false
	}
	status, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), len(strings.TrimSpace(string(status))) > 0
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func hostInfo() map[string]string {
	h := map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "goos": runtime.GOOS, "goarch": runtime.GOARCH}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h["linux"] = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		h["loadavg_at_start"] = strings.Join(strings.Fields(string(data))[:3], " ")
	}
	if kib, err := meminfo("MemTotal:"); err == nil {
		h["memory_gib"] = strconv.FormatFloat(float64(kib)/(1<<20), 'f', 1, 64)
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				h["cpu"] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return h
}

func meminfo(field string) (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			return strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s", field)
}

// versions reads the versions of the comparison's parts off this machine,
// so the report never states one from memory.
func versions(o options) map[string]string {
	v := map[string]string{}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import jupyter_server, ipykernel; print(jupyter_server.__version__, ipykernel.__version__)").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) == 2 {
			v["jupyter_server"], v["ipykernel"] = f[0], f[1]
		}
	}
	if data, err := os.ReadFile(filepath.Join(o.nodeModules, "@jupyterlab", "services", "package.json")); err == nil {
		var pkg struct{ Version string }
		if json.Unmarshal(data, &pkg) == nil {
			v["@jupyterlab/services"] = pkg.Version
		}
	}
	if out, err := exec.Command("node", "--version").Output(); err == nil {
		v["node"] = strings.TrimSpace(string(out))
	}
	return v
}

// versionOf names a part with its version when it is known.
func versionOf(rep Report, name, label string) string {
	if v := rep.Versions[name]; v != "" {
		return label + " " + v
	}
	return label
}
