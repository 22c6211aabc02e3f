package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sections of the report, in the order they are printed.
const (
	secPool     = "Kernel pool and cold start"
	secSession  = "New session: POST /kernel + websocket → first execute_reply of 1+1"
	secExecute  = "Execute round trip of 1+1 on one kernel (send → execute_reply and idle status)"
	secJupyter  = "@jupyterlab/services client: cellgate vs Jupyter Server (same script, alternating)"
	secService  = "POST /service throughput and pool refill"
	secMemory   = "Memory"
	secStorage  = "Storage: permalinks and kernel files"
	secCodec    = "Wire codec (jupytermsg, in-process)"
	codeService = "print(6*7)"
)

var sectionOrder = []string{secPool, secSession, secExecute, secJupyter, secService, secBurst, secMemory, secStorage, secStored, secCluster, secCodec}

// env is what the phases share.
type env struct {
	opts    options
	rec     *recorder
	api     *api
	gw      *server
	tmp     string
	inproc  *inproc
	gobench []GoBench
	// zmqFloor is BenchmarkExecuteZMQ's mean in ms, 0 when missing.
	zmqFloor float64
	// poolTotal is the number of ready kernels cellgate keeps.
	poolTotal int
	// maxKernels is cellgate's --max-kernels.
	maxKernels int
	// clusterShown is how the cluster phase ran its instances, for the report.
	clusterShown string
}

// reader returns a distinct fake reader address for X-Forwarded-For,
// from the benchmarking range 198.18.0.0/15 (RFC 2544).
func reader(group, i int) string {
	return fmt.Sprintf("198.%d.%d.%d", 18+group/256, group%256, i%250+1)
}

// sessionTiming is one reader opening a cell.
type sessionTiming struct {
	total, post, dial, exec time.Duration
	second                  time.Duration // a second 1+1 in the same session (reply)
}

// oneSession is a reader opening a cell: POST /kernel, websocket, execute
// 1+1 until the reply.
func (e *env) oneSession(ctx context.Context, from string) (st sessionTiming, err error) {
	t0 := time.Now()
	k, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"0"}}, from)
	if err != nil {
		return st, err
	}
	st.post = time.Since(t0)
	defer func() {
		if derr := e.api.deleteKernel(k.ID); derr != nil && err == nil {
			err = derr
		}
	}()
	ws, err := sageChannels(ctx, k)
	if err != nil {
		return st, err
	}
	defer ws.close()
	st.dial = time.Since(t0) - st.post
	t, err := execute(ctx, ws, "1+1", false)
	if err != nil {
		return st, err
	}
	st.total = t.replyAt.Sub(t0)
	st.exec = st.total - st.post - st.dial
	t2, err := execute(ctx, ws, "1+1", false)
	if err != nil {
		return st, err
	}
	st.second = t2.reply
	return st, nil
}

// oneJupyterSession is the same through the Jupyter Server API from Go:
// POST /api/kernels, websocket (legacy JSON), 1+1 until the reply. This
// API has no permalink or file hooks.
func (e *env) oneJupyterSession(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	id, ws, err := e.api.jupyterKernel(ctx)
	if id != "" {
		defer e.api.deleteJupyterKernel(id)
	}
	if err != nil {
		return 0, err
	}
	defer ws.close()
	t, err := execute(ctx, ws, "1+1", false)
	if err != nil {
		return 0, err
	}
	return t.replyAt.Sub(t0), nil
}

func (e *env) phaseSessions(ctx context.Context) error {
	var warm, post, dial, exec, second, jupyter []float64
	for i := 0; i < e.opts.sessions; i++ {
		if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
			return err
		}
		st, err := e.oneSession(ctx, reader(1, i))
		if err != nil {
			return fmt.Errorf("warm session %d: %w", i, err)
		}
		warm = append(warm, ms(st.total))
		post = append(post, ms(st.post))
		dial = append(dial, ms(st.dial))
		exec = append(exec, ms(st.exec))
		second = append(second, ms(st.second))
		if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
			return err
		}
		d, err := e.oneJupyterSession(ctx)
		if err != nil {
			return fmt.Errorf("warm Jupyter API session %d: %w", i, err)
		}
		jupyter = append(jupyter, ms(d))
	}
	e.rec.dist(secSession, "session_warm", "warm pool (paced: pool full before each)", "ms", warm,
		"p50 < 20 ms (issue 3)", "a cold kernel start takes ~1.3 s instead")
	e.rec.dist(secSession, "session_warm_post_kernel", "  POST /kernel (lease)", "ms", post, "", "")
	e.rec.dist(secSession, "session_warm_ws_dial", "  websocket open", "ms", dial, "", "")
	e.rec.dist(secSession, "session_warm_first_execute", "  first execute_request → execute_reply", "ms", exec, "",
		"compare: first execute on a fresh kernel over direct ZMQ, above")
	e.rec.dist(secSession, "session_warm_second_execute", "  then a second 1+1 in the same session → execute_reply", "ms", second, "", "")
	e.rec.dist(secSession, "session_warm_jupyter_api", "the same through POST /api/kernels + websocket (Go client)", "ms", jupyter, "",
		"interleaved with the rows above; no permalink/file hooks on this API")

	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	var drained []float64
	for i := 0; i < e.opts.backToBack; i++ {
		st, err := e.oneSession(ctx, reader(2, i))
		if err != nil {
			return fmt.Errorf("back-to-back session %d: %w", i, err)
		}
		drained = append(drained, ms(st.total))
	}
	e.rec.dist(secSession, "session_back_to_back", "back to back, no pacing (pool drains)", "ms", drained, "",
		"after the ready kernels are used, each session waits for a kernel start")
	return nil
}

// phaseExecute interleaves executions over the four paths, one of each
// per round, so that the machine's noise falls on all of them alike.
func (e *env) phaseExecute(ctx context.Context) error {
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	sageK, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"600"}}, reader(3, 1))
	if err != nil {
		return err
	}
	defer e.api.deleteKernel(sageK.ID)
	ws, err := sageChannels(ctx, sageK)
	if err != nil {
		return err
	}
	defer ws.close()

	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	pollK, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"600"}}, reader(3, 2))
	if err != nil {
		return err
	}
	defer e.api.deleteKernel(pollK.ID)
	poll := startPoll(e.api.http, e.api.base, pollK.ID)
	defer poll.close()

	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	jid, jws, err := e.api.jupyterKernel(ctx)
	if err != nil {
		return err
	}
	defer e.api.deleteJupyterKernel(jid)
	defer jws.close()

	zk, _, err := e.inproc.start(ctx, e.inproc.bwrap)
	if err != nil {
		return fmt.Errorf("in-process kernel: %w", err)
	}
	defer zk.Shutdown()
	direct := zmqClient{zk}

	paths := []struct {
		name string
		run  func() (time.Duration, error)
	}{
		{"zmq", func() (time.Duration, error) { return direct.execute(ctx) }},
		{"ws", func() (time.Duration, error) { t, err := execute(ctx, ws, "1+1", false); return t.idle, err }},
		{"poll", func() (time.Duration, error) { t, err := execute(ctx, poll, "1+1", false); return t.idle, err }},
		{"jupyter", func() (time.Duration, error) { t, err := execute(ctx, jws, "1+1", false); return t.idle, err }},
	}
	samples := map[string][]float64{}
	for r := -5; r < e.opts.rounds; r++ { // 5 warm-up rounds
		for j := range paths {
			p := paths[(r+5+j)%len(paths)]
			d, err := p.run()
			if err != nil {
				return fmt.Errorf("execute over %s: %w", p.name, err)
			}
			if r >= 0 {
				samples[p.name] = append(samples[p.name], ms(d))
			}
		}
	}
	z := e.rec.dist(secExecute, "execute_zmq_inproc", "direct ZMQ from Go (sandboxed kernel, kernelpool.Execute)", "ms", samples["zmq"], "",
		"in cellbench, interleaved with the rows below")
	floor := z.p50
	floorNote := "vs direct ZMQ p50 of this table"
	if e.zmqFloor > 0 {
		e.rec.valueFrom(secExecute, "execute_zmq_gobench", "direct ZMQ floor: BenchmarkExecuteZMQ (unsandboxed)", "ms", e.zmqFloor, "",
			"a mean, run minutes earlier: for reference; the interleaved p50 above is the floor", "go test -bench BenchmarkExecuteZMQ ./kernelpool")
	}
	for _, p := range []struct{ key, id, label, short, target, note string }{
		{"ws", "execute_ws", "cellgate Sage-cell websocket", "Sage-cell websocket", "< 0.5 ms added at p50 (issue 3)", "includes the permalink and file-snapshot hooks of every Sage-cell execution"},
		{"poll", "execute_poll", "cellgate long-polling (GET held open + POST)", "long-polling", "", "one receive loop always open, as a polling client keeps it"},
		{"jupyter", "execute_jupyter_ws", "cellgate Jupyter API websocket (legacy JSON)", "Jupyter API websocket", "", "no permalink/file hooks on this API"},
	} {
		s := e.rec.dist(secExecute, p.id, p.label, "ms", samples[p.key], "", p.note)
		e.rec.value(secExecute, p.id+"_added", "  added at p50 over direct ZMQ", "ms", s.p50-floor, p.target, floorNote+" ("+p.short+")")
	}
	// The gateway's CPU per execution, path by path (not interleaved:
	// cellgate's CPU time cannot be told apart by path otherwise).
	const cpuRuns = 100
	for _, p := range []struct {
		key, id, label string
		note           string
	}{
		{"ws", "gateway_cpu_ws", "cellgate CPU per execution: Sage-cell websocket", "all threads, embedded database included"},
		{"poll", "gateway_cpu_poll", "cellgate CPU per execution: long-polling", ""},
		{"jupyter", "gateway_cpu_jupyter_ws", "cellgate CPU per execution: Jupyter API websocket", ""},
	} {
		var run func() (time.Duration, error)
		for _, q := range paths {
			if q.name == p.key {
				run = q.run
			}
		}
		time.Sleep(200 * time.Millisecond) // let background writes of the rounds above finish
		c0, err := cpuTime(e.gw.pid())
		if err != nil {
			return err
		}
		for i := 0; i < cpuRuns; i++ {
			if _, err := run(); err != nil {
				return fmt.Errorf("execute over %s: %w", p.key, err)
			}
		}
		time.Sleep(200 * time.Millisecond) // and those of these
		c1, err := cpuTime(e.gw.pid())
		if err != nil {
			return err
		}
		e.rec.value(secExecute, p.id, p.label, "ms", ms(c1-c0)/cpuRuns, "", p.note)
	}
	if err := poll.failure(); err != nil {
		return fmt.Errorf("poll loop: %w", err)
	}
	return nil
}

// jsResult is bench/jsbench.js's output.
type jsResult struct {
	Targets map[string]struct {
		ReadyMS []float64 `json:"ready_ms"`
		ExecMS  []float64 `json:"exec_ms"`
		Errors  []string  `json:"errors"`
	} `json:"targets"`
	Error string `json:"error"`
}

func (e *env) phaseJupyterLab(ctx context.Context) error {
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	token := "jsbench-" + randomHex(8)
	js, err := startJupyterServer(ctx, filepath.Join(e.tmp, "jupyter"), token)
	if err != nil {
		return fmt.Errorf("jupyter server: %w", err)
	}
	defer func() {
		if err := js.stop(20 * time.Second); err != nil {
			e.rec.problem("%v", err)
		}
	}()
	e.rec.value(secJupyter, "jupyter_server_start", "Jupyter Server process start → /api/status 200", "ms", ms(js.ready), "", "for reference; cellgate's own start is in Memory")

	targets, _ := json.Marshal([]map[string]string{
		{"name": "cellgate", "url": e.api.base, "token": e.api.token},
		{"name": "jupyter_server", "url": js.base, "token": token},
	})
	cmd := exec.CommandContext(ctx, "node", e.opts.jsScript)
	cmd.Env = append(os.Environ(), "NODE_PATH="+e.opts.nodeModules, "JSBENCH_TARGETS="+string(targets),
		fmt.Sprintf("JSBENCH_KERNELS=%d", e.opts.jsKernels), fmt.Sprintf("JSBENCH_EXECUTES=%d", e.opts.jsExecutes),
		"JSBENCH_PAUSE_MS=1500")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("node %s: %w\n%s\n%s", e.opts.jsScript, err, stdout.String(), stderr.String())
	}
	var res jsResult
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res); err != nil || res.Error != "" {
		return fmt.Errorf("node %s: %v %s\n%s", e.opts.jsScript, err, res.Error, stderr.String())
	}
	cg, jsr := res.Targets["cellgate"], res.Targets["jupyter_server"]
	for name, t := range res.Targets {
		for _, msg := range t.Errors {
			e.rec.problem("jsbench %s: %s", name, msg)
		}
	}
	a := e.rec.dist(secJupyter, "jlab_ready_cellgate", "cellgate: startNew → kernel idle and connected", "ms", cg.ReadyMS, "", "kernel from the prewarmed, sandboxed pool")
	b := e.rec.dist(secJupyter, "jlab_ready_jupyter_server", "Jupyter Server: startNew → kernel idle and connected", "ms", jsr.ReadyMS, "", "kernel started on demand, unsandboxed")
	if a.p50 > 0 {
		e.rec.value(secJupyter, "jlab_ready_ratio", "start-to-ready ratio, Jupyter Server / cellgate (p50)", "×", b.p50/a.p50, "", "")
	}
	c := e.rec.dist(secJupyter, "jlab_exec_cellgate", "cellgate: requestExecute(1+1) → future.done", "ms", cg.ExecMS, "", "v1 websocket subprotocol")
	d := e.rec.dist(secJupyter, "jlab_exec_jupyter_server", "Jupyter Server: requestExecute(1+1) → future.done", "ms", jsr.ExecMS, "", "")
	if c.p50 > 0 {
		e.rec.value(secJupyter, "jlab_exec_ratio", "execute ratio, Jupyter Server / cellgate (p50)", "×", d.p50/c.p50, "", "")
	}
	return e.jupyterServerGo(ctx, js.base, token)
}

// jupyterServerGo times executions on a Jupyter Server kernel from Go over
// the legacy JSON websocket, to see where its time goes: until the busy
// status, and until the reply and the idle status.
func (e *env) jupyterServerGo(ctx context.Context, base, token string) error {
	js := &api{base: base, token: token, http: e.api.http}
	id, ws, err := js.jupyterKernel(ctx)
	if id != "" {
		defer js.deleteJupyterKernel(id)
	}
	if err != nil {
		return fmt.Errorf("jupyter server kernel: %w", err)
	}
	defer ws.close()
	if _, err := execute(ctx, ws, "1+1", false); err != nil { // waits for the kernel's start
		return fmt.Errorf("jupyter server kernel: %w", err)
	}
	var busy, done []float64
	for i := 0; i < 40; i++ {
		t, err := execute(ctx, ws, "1+1", false)
		if err != nil {
			return fmt.Errorf("jupyter server kernel: %w", err)
		}
		busy = append(busy, ms(t.busy))
		done = append(done, ms(t.idle))
	}
	e.rec.dist(secJupyter, "jupyter_server_go_busy", "Jupyter Server, Go client (legacy JSON): send → status busy", "ms", busy, "", "where Jupyter Server's execute time goes")
	e.rec.dist(secJupyter, "jupyter_server_go_done", "Jupyter Server, Go client: send → reply and idle", "ms", done, "", "")
	return nil
}

// serviceAnswer is POST /service's answer.
type serviceAnswer struct {
	Success bool   `json:"success"`
	Stdout  string `json:"stdout"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

func (a *api) postService(ctx context.Context, from string) error {
	form := url.Values{"code": {codeService}, "kernel_name": {"python3"}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"service", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-For", from)
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ans serviceAnswer
	if err := json.Unmarshal(data, &ans); err != nil {
		return fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, data)
	}
	if resp.StatusCode != http.StatusOK || !ans.Success || ans.Stdout != "42\n" {
		err := fmt.Errorf("HTTP %d: %s %s (stdout %q)", resp.StatusCode, ans.Error, ans.Message, ans.Stdout)
		if s, _ := strconv.Atoi(resp.Header.Get("Retry-After")); s > 0 {
			return &busyError{err: err, retryAfter: time.Duration(s) * time.Second}
		}
		return err
	}
	return nil
}

// busyError is an answer that says when to come back (Retry-After).
type busyError struct {
	err        error
	retryAfter time.Duration
}

func (e *busyError) Error() string { return e.err.Error() }

// honourRetryAfter sleeps as a busy answer asks (until deadline at most),
// as a client should rather than asking again at once.
func honourRetryAfter(ctx context.Context, err error, deadline time.Time) {
	var busy *busyError
	if !errors.As(err, &busy) {
		return
	}
	select {
	case <-ctx.Done():
	case <-time.After(min(busy.retryAfter, time.Until(deadline))):
	}
}

func (e *env) phaseService(ctx context.Context) error {
	for gi, clients := range []int{1, 4, 16} {
		if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
			return err
		}
		var (
			mu      sync.Mutex
			lat     []float64
			errs    int
			samples = map[string]bool{}
			wg      sync.WaitGroup
		)
		start := time.Now()
		deadline := start.Add(e.opts.serviceDur)
		var lastDone time.Time
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
					t := time.Now()
					err := e.api.postService(ctx, reader(10+gi, c))
					mu.Lock()
					if err != nil {
						errs++
						if len(samples) < 3 {
							samples[err.Error()] = true
						}
					} else {
						lat = append(lat, ms(time.Since(t)))
					}
					lastDone = time.Now()
					mu.Unlock()
					honourRetryAfter(ctx, err, deadline)
				}
			}()
		}
		wg.Wait()
		elapsed := lastDone.Sub(start)
		s := summarize(lat)
		note := ""
		for msg := range samples {
			note += "error: " + msg + "; "
		}
		e.rec.rows = append(e.rec.rows, Row{ID: fmt.Sprintf("service_%d_clients", clients), Section: secService,
			Label: fmt.Sprintf("%d concurrent client(s), %s", clients, e.opts.serviceDur), Unit: "computations/s",
			Values: map[string]float64{"value": round(float64(len(lat)) / elapsed.Seconds()), "errors": float64(errs),
				"p50_ms": round(s.p50), "p99_ms": round(s.p99), "n": float64(len(lat))},
			Source: "cellbench", Note: strings.TrimSuffix(note, "; ")})
	}
	return nil
}

// phaseRefill leases 20 kernels at once and times the pool's way back to
// full.
func (e *env) phaseRefill(ctx context.Context) error {
	const burst = 20
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	var (
		mu    sync.Mutex
		ids   []string
		lease []float64
		errs  []string
		wg    sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < burst; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.Now()
			k, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"120"}}, reader(20, i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			ids = append(ids, k.ID)
			lease = append(lease, ms(time.Since(t)))
		}()
	}
	wg.Wait()
	allLeased := time.Since(start)
	refill, err := e.api.waitPoolFull(3 * time.Minute)
	if err != nil {
		return err
	}
	refilled := allLeased + refill
	for _, id := range ids {
		if err := e.api.deleteKernel(id); err != nil {
			e.rec.problem("refill: %v", err)
		}
	}
	s := summarize(lease)
	note := ""
	if len(errs) > 0 {
		note = fmt.Sprintf("%d leases failed, e.g. %s", len(errs), errs[0])
	}
	e.rec.rows = append(e.rec.rows, Row{ID: "burst_20_leases", Section: secService,
		Label: "burst of 20 concurrent POST /kernel: all answered after", Unit: "ms",
		Values: map[string]float64{"value": round(ms(allLeased)), "lease_p50_ms": round(s.p50), "errors": float64(len(errs))},
		Source: "cellbench", Note: note})
	e.rec.value(secService, "pool_refill_after_burst", "pool full again (ready = --pool) after the burst began", "ms", ms(refilled), "",
		"kernels start at most 2 at a time")
	return nil
}

func (e *env) phasePermalinks(ctx context.Context) error {
	prefix := randomHex(6)
	ids := make([]string, 0, e.opts.permalinks)
	var create, lookup []float64
	for i := 0; i < e.opts.permalinks; i++ {
		form := url.Values{"code": {fmt.Sprintf("# cellbench %s\nprint(%d)", prefix, i)}, "language": {"python3"}, "n": {"1"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.api.base+"permalink", strings.NewReader(form.Encode()))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		// Readers share links, one address a few: one address would meet
		// --permalinks-per-minute.
		req.Header.Set("X-Forwarded-For", reader(50, i))
		t := time.Now()
		resp, err := e.api.http.Do(req)
		if err != nil {
			return err
		}
		var a struct {
			Query string `json:"query"`
		}
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || a.Query == "" {
			return fmt.Errorf("POST /permalink: HTTP %d: %v", resp.StatusCode, err)
		}
		create = append(create, ms(time.Since(t)))
		ids = append(ids, a.Query)
	}
	// Creation answers from the write-behind queue; look up once it has
	// reached the database, so lookups are database reads.
	if err := e.api.waitPermalinkQueueEmpty(ctx, time.Minute); err != nil {
		return err
	}
	for _, id := range ids {
		t := time.Now()
		// The Sage cell's shape: [code, language, interacts].
		var p []string
		code, err := getJSON(e.api.http, e.api.base+"permalink?q="+id, nil, &p)
		if err != nil || code != http.StatusOK || len(p) != 3 || !strings.Contains(p[0], prefix) {
			return fmt.Errorf("GET /permalink?q=%s: HTTP %d: %v", id, code, err)
		}
		lookup = append(lookup, ms(time.Since(t)))
	}
	e.rec.dist(secStorage, "permalink_create_http", "POST /permalink (HTTP, embedded FerretDB)", "ms", create, "p50/p99 reported (issue 4)",
		"answered once queued; the database write follows")
	e.rec.dist(secStorage, "permalink_lookup_http", "GET /permalink?q=ID (HTTP, from the database)", "ms", lookup, "p50/p99 reported (issue 4)",
		"each lookup also updates last-accessed and the count")
	return nil
}

func (e *env) phaseFiles(ctx context.Context) error {
	const size = 10_000_000
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	k, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"120"}}, reader(30, 1))
	if err != nil {
		return err
	}
	defer e.api.deleteKernel(k.ID)
	ws, err := sageChannels(ctx, k)
	if err != nil {
		return err
	}
	defer ws.close()
	if _, err := execute(ctx, ws, fmt.Sprintf("import os\ndata = bytearray(os.urandom(%d))", size), false); err != nil {
		return err
	}
	var upload, base, fetch []float64
	for i := 0; i < e.opts.fileRounds; i++ {
		b, err := execute(ctx, ws, fmt.Sprintf("data[0] = %d", i), false)
		if err != nil {
			return err
		}
		base = append(base, ms(b.reply))
		t, err := execute(ctx, ws, fmt.Sprintf("data[0] = %d\nwith open('big.bin', 'wb') as f: f.write(data)", i), true)
		if err != nil {
			return err
		}
		var link string
		for _, f := range t.files {
			for _, fl := range f.Content.Files {
				if fl.Name == "big.bin" && fl.Size == size {
					link = fl.URL
				}
			}
		}
		if link == "" {
			return fmt.Errorf("no cellgate.files entry for big.bin (%d bytes)", size)
		}
		upload = append(upload, ms(t.filesAt))
		started := time.Now()
		resp, err := e.api.http.Get(link)
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		took := time.Since(started)
		if err != nil || resp.StatusCode != http.StatusOK || n != size {
			return fmt.Errorf("GET %s: HTTP %d, %d bytes: %v", link, resp.StatusCode, n, err)
		}
		if etag := strings.Trim(resp.Header.Get("ETag"), `"`); etag != hex.EncodeToString(h.Sum(nil)) {
			return fmt.Errorf("GET %s: body sha256 does not match ETag %s", link, etag)
		}
		fetch = append(fetch, ms(took))
	}
	up, bs, fe := summarize(upload), summarize(base), summarize(fetch)
	mb := float64(size) / 1e6
	e.rec.dist(secStorage, "file_upload_10MB", "kernel writes 10 MB: execute → cellgate.files message", "ms", upload, "", "")
	e.rec.value(secStorage, "file_upload_MBps", "  upload throughput, end to end (10 MB / p50)", "MB/s", mb/(up.p50/1000), "MB/s reported (issue 4)",
		fmt.Sprintf("an execute that writes nothing takes %s ms (p50)", fmtNum(bs.p50)))
	if up.p50 > bs.p50 {
		e.rec.value(secStorage, "file_upload_MBps_net", "  upload throughput, less a no-write execute", "MB/s", mb/((up.p50-bs.p50)/1000), "", "")
	}
	e.rec.dist(secStorage, "file_fetch_10MB", "GET /files/{id}/big.bin (10 MB, sha256 checked)", "ms", fetch, "", "")
	e.rec.value(secStorage, "file_fetch_MBps", "  fetch throughput (10 MB / p50)", "MB/s", mb/(fe.p50/1000), "", "")
	return nil
}

// phaseMemory opens idle sessions (websocket attached, one 1+1 executed)
// and compares the gateway's RSS before and after, and the kernels'.
func (e *env) phaseMemory(ctx context.Context, startRSS int64) error {
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	time.Sleep(time.Second)
	before, err := statusKiB(e.gw.pid(), "VmRSS:")
	if err != nil {
		return err
	}
	n := e.opts.idleSessions
	type open struct {
		id string
		ws *wsClient
	}
	var (
		mu       sync.Mutex
		sessions []open
		errs     []error
		next     int
		wg       sync.WaitGroup
	)
	closed := false
	closeAll := func() {
		if closed {
			return
		}
		closed = true
		for _, s := range sessions {
			s.ws.close()
			if err := e.api.deleteKernel(s.id); err != nil {
				e.rec.problem("memory: %v", err)
			}
		}
	}
	defer closeAll()
	// Two at a time: kernels start two at a time anyway.
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n || ctx.Err() != nil {
					return
				}
				k, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"900"}}, reader(40+i/200, i))
				if err == nil {
					var ws *wsClient
					if ws, err = sageChannels(ctx, k); err == nil {
						mu.Lock()
						sessions = append(sessions, open{k.ID, ws})
						mu.Unlock()
						_, err = execute(ctx, ws, "1+1", false)
					} else {
						_ = e.api.deleteKernel(k.ID)
					}
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("opening %d idle sessions (%d open): %w", n, len(sessions), errors.Join(errs...))
	}
	if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // let the sessions settle to idle
	after, err := statusKiB(e.gw.pid(), "VmRSS:")
	if err != nil {
		return err
	}
	km, err := measureKernels(e.gw.pid())
	if err != nil {
		return err
	}
	// The template the kernels were forked from, measured with them alive:
	// the pages it shares with them are divided among them all.
	templatePSS, templateErr := e.api.metric(`cellgate_fork_template_memory_bytes{kind="python",state="serving"}`)
	c0, err := cpuTime(e.gw.pid())
	if err != nil {
		return err
	}
	const idleWindow = 5 * time.Second
	time.Sleep(idleWindow)
	c1, err := cpuTime(e.gw.pid())
	if err != nil {
		return err
	}
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	e.rec.value(secMemory, "gateway_rss_start", "gateway RSS just after start (pool full, 0 sessions)", "MiB", mib(startRSS), "",
		"includes the embedded FerretDB")
	e.rec.value(secMemory, "gateway_rss_0", "gateway RSS, 0 sessions (after the phases above)", "MiB", mib(before), "", "")
	e.rec.value(secMemory, "gateway_rss_n", fmt.Sprintf("gateway RSS, %d idle sessions", len(sessions)), "MiB", mib(after),
		"100 idle sessions (issue 7)", "websocket attached, one 1+1 executed; 90 by default: 100 hits the ZMQ socket cap (README)")
	e.rec.value(secMemory, "gateway_rss_per_session", "  gateway cost per idle session", "KiB", float64(after-before)/float64(len(sessions)), "", "")
	// How long the kernels of all these sessions take to be gone once
	// the sessions are deleted (shutdown request, signals, sandbox
	// teardown), until only the pool's own kernels are left (more than
	// --pool for a while: the elastic pool grew with these sessions).
	began := time.Now()
	closeAll()
	deleted := time.Since(began)
	for {
		km, err := measureKernels(e.gw.pid())
		if err != nil {
			return err
		}
		held, err := e.api.poolHeld()
		if err != nil {
			return err
		}
		if km.kernels <= held {
			break
		}
		if time.Since(began) > 2*time.Minute {
			return fmt.Errorf("%d kernels still running 2 minutes after their sessions were deleted (the pool holds %d)", km.kernels-held, held)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.rec.rows = append(e.rec.rows, Row{ID: "idle_sessions_teardown", Section: secMemory,
		Label: fmt.Sprintf("DELETE of the %d sessions until their kernels are gone", len(sessions)), Unit: "ms",
		Values: map[string]float64{"value": round(ms(time.Since(began))), "deletes_ms": round(ms(deleted))},
		Source: "cellbench", Note: "sequential DELETE /kernel/{id}, then waiting for the kernel processes to exit"})
	e.rec.value(secMemory, "gateway_cpu_idle_sessions", fmt.Sprintf("cellgate CPU with %d idle sessions", len(sessions)), "% of a core",
		100*float64(c1-c0)/float64(idleWindow), "", fmt.Sprintf("over %s; heartbeats every 2 s per kernel", idleWindow))
	if km.kernels > 0 {
		k := float64(km.kernels)
		e.rec.rows = append(e.rec.rows, Row{ID: "kernel_memory_idle", Section: secMemory,
			Label: fmt.Sprintf("per idle sandboxed kernel (%d kernels, PSS)", km.kernels), Unit: "MiB",
			Values: map[string]float64{"value": round(mib(km.kernelPSS+km.bwrapPSSKiB) / k),
				"kernel_pss": round(mib(km.kernelPSS) / k), "bwrap_pss": round(mib(km.bwrapPSSKiB) / k),
				"kernel_rss": round(mib(km.kernelRSSKiB) / k)},
			Source: "cellbench", Note: "python kernel + its two bwrap processes; RSS counts shared pages in full"})
	}
	if templateErr != nil {
		e.rec.problem("phase memory: the python fork template's memory: %v", templateErr)
	} else {
		e.rec.value(secMemory, "fork_template_pss", fmt.Sprintf("  the python fork template's own PSS, with those %d kernels alive", km.kernels), "MiB",
			templatePSS/(1<<20), "", "what the kernels cost the template: its pages are shared with them (cellgate_fork_template_memory_bytes)")
	}
	return nil
}

// phaseColdStart times kernels from launch to ready, sandboxed and not,
// and the first execution on a fresh kernel.
func (e *env) phaseColdStart(ctx context.Context) error {
	starts, stops, quiet, busy, err := e.inproc.coldStarts(ctx, e.opts.coldStarts)
	if err != nil {
		return err
	}
	none := e.rec.dist(secPool, "cold_start_none", "python3 kernel launch → ready, --sandbox=none", "ms", durationsMS(starts["none"]), "", "kernelpool.StartKernel in cellbench, alternating")
	bw := e.rec.dist(secPool, "cold_start_bwrap", "python3 kernel launch → ready, --sandbox=bwrap", "ms", durationsMS(starts["bwrap"]), "", "")
	if none.p50 > 0 {
		e.rec.value(secPool, "cold_start_ratio", "  sandboxed / unsandboxed (p50)", "×", bw.p50/none.p50, "ratio reported (issue 5)", "")
	}
	e.rec.dist(secPool, "shutdown_none", "kernel shutdown until reaped, --sandbox=none", "ms", durationsMS(stops["none"]), "", "kernelpool Kernel.Shutdown")
	e.rec.dist(secPool, "shutdown_bwrap", "kernel shutdown until reaped and sandbox released, --sandbox=bwrap", "ms", durationsMS(stops["bwrap"]), "", "")
	e.rec.dist(secPool, "first_execute_bwrap", "first 1+1 on a fresh sandboxed kernel, direct ZMQ (reply and idle)", "ms", durationsMS(quiet), "",
		"the kernel's own share of a new session")
	e.rec.dist(secPool, "first_execute_bwrap_busy", "  the same while another kernel starts", "ms", durationsMS(busy), "",
		"what a refill started at once after a lease costs the leased kernel; the pool holds it back 1 s while another kernel is ready")
	return nil
}

// goRows turns the Go benchmarks' results into rows.
func (e *env) goRows() {
	type pick struct {
		pkg, name, metric, section, id, label, unit string
		scale                                       float64
		target, note                                string
	}
	const nsToMS, nsToUS = 1e-6, 1e-3
	picks := []pick{
		{"kernelpool", "BenchmarkLease", "ns/op", secPool, "lease_warm", "lease from a warm pool (kernelpool.Lease)", "µs", nsToUS, "< 1 ms (issue 2)", ""},
		{"kernelpool", "BenchmarkColdStart/python3", "ns/op", secPool, "cold_start_python3_gobench", "python3 kernel cold start to ready (unsandboxed)", "ms", nsToMS, "~1.3 s (issue 3)", ""},
		{"kernelpool", "BenchmarkColdStart/sagemath", "ns/op", secPool, "cold_start_sagemath_gobench", "sagemath kernel cold start to ready (unsandboxed)", "ms", nsToMS, "", ""},
		{"kernelpool", "BenchmarkSandboxedStart/cold", "ns/op", secPool, "start_bwrap_cold_gobench", "python3 kernel launch → ready in bwrap, cold (same run as the next row)", "ms", nsToMS, "", "BenchmarkSandboxedStart"},
		{"kernelpool", "BenchmarkSandboxedStart/forked-imports", "ns/op", secPool, "start_bwrap_forked_imports_gobench", "  the same, forked from a template that only imported the machinery", "ms", nsToMS, "", "sandbox.Config.ForkPrepare off"},
		{"kernelpool", "BenchmarkSandboxedStart/forked", "ns/op", secPool, "start_bwrap_forked_gobench", "  the same, forked from a template that also prepared the kernel application (--fork=on)", "ms", nsToMS, "≤ 60 ms (issue 10)", ""},
		{"kernelpool", "BenchmarkSandboxedStartSage/cold", "ns/op", secPool, "start_bwrap_sage_cold_gobench", "sagemath kernel launch → ready in bwrap, cold (same run as the next rows)", "ms", nsToMS, "", "BenchmarkSandboxedStartSage"},
		{"kernelpool", "BenchmarkSandboxedStartSage/forked-imports", "ns/op", secPool, "start_bwrap_sage_forked_imports_gobench", "  the same, forked from a template that only imported sage.all and drew a plot", "ms", nsToMS, "", "sandbox.Config.ForkPrepare off"},
		{"kernelpool", "BenchmarkSandboxedStartSage/forked", "ns/op", secPool, "start_bwrap_sage_forked_gobench", "  the same, forked from a template that also prepared the kernel application (--fork=on)", "ms", nsToMS, "≤ 400 ms (issue 10)", ""},
		{"kernelpool", "BenchmarkSupply/cold", "kernels/s", secPool, "supply_cold_gobench", "fresh sandboxed python3 kernels per second from an empty pool (20 leases at once, each to its 1+1 answer), cold", "kernels/s", 1, "", "BenchmarkSupply; default MaxConcurrentStarts"},
		{"kernelpool", "BenchmarkSupply/forked", "kernels/s", secPool, "supply_forked_gobench", "  the same, forked (--fork=on)", "kernels/s", 1, "≥ 10, aim 30 (issue 10)", ""},
		{"kernelpool", "BenchmarkSupply/cold", "ms-per-start", secPool, "supply_cold_start_gobench", "  each of the pool's starts in that burst, cold (mean)", "ms", 1, "", "two at a time"},
		{"kernelpool", "BenchmarkSupply/forked", "ms-per-start", secPool, "supply_forked_start_gobench", "  each of the pool's starts in that burst, forked (mean)", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkSupply/cold", "cpu-ms-per-kernel", secPool, "supply_cold_cpu_gobench", "  the machine's busy CPU per kernel in that burst (every process), cold", "ms", 1, "", "/proc/stat over the timed part"},
		{"kernelpool", "BenchmarkSupply/forked", "cpu-ms-per-kernel", secPool, "supply_forked_cpu_gobench", "  the same, forked", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkSupplyConcurrentStarts/forked", "kernels/s-1-at-once", secPool, "supply_forked_1_at_once_gobench", "forked kernels per second from an empty pool with 1 start at once (20 leases)", "kernels/s", 1, "", "BenchmarkSupplyConcurrentStarts: the four in turn, round by round; the default is 2"},
		{"kernelpool", "BenchmarkSupplyConcurrentStarts/forked", "kernels/s-2-at-once", secPool, "supply_forked_2_at_once_gobench", "  the same, 2 starts at once", "kernels/s", 1, "", ""},
		{"kernelpool", "BenchmarkSupplyConcurrentStarts/forked", "kernels/s-3-at-once", secPool, "supply_forked_3_at_once_gobench", "  the same, 3 starts at once", "kernels/s", 1, "", ""},
		{"kernelpool", "BenchmarkSupplyConcurrentStarts/forked", "kernels/s-4-at-once", secPool, "supply_forked_4_at_once_gobench", "  the same, 4 starts at once", "kernels/s", 1, "", ""},
		{"kernelpool", "BenchmarkWarmup/forked", "ready-ms-warmup", secPool, "warmup_forked_ready_gobench", "forked python3 launch → ready with the pool's warm-up (median)", "ms", 1, "", "BenchmarkWarmup: with and without, kernel by kernel"},
		{"kernelpool", "BenchmarkWarmup/forked", "first-cell-ms-warmup", secPool, "warmup_forked_first_cell_gobench", "  then its first cell (1+1 to reply and idle)", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkWarmup/forked", "ready-ms-none", secPool, "nowarmup_forked_ready_gobench", "forked python3 launch → ready without a warm-up (median)", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkWarmup/forked", "first-cell-ms-none", secPool, "nowarmup_forked_first_cell_gobench", "  then its first cell", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkWarmup/cold", "first-cell-ms-warmup", secPool, "warmup_cold_first_cell_gobench", "first cell of a cold python3 kernel after the pool's warm-up", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkWarmup/cold", "first-cell-ms-none", secPool, "nowarmup_cold_first_cell_gobench", "  the same without a warm-up", "ms", 1, "", ""},
		{"kernelpool", "BenchmarkFirstPlot/cold", "ns/op", secPool, "first_plot_cold_gobench", "first plot on a fresh sandboxed python3 kernel (import pyplot, plot, inline PNG), cold", "ms", nsToMS, "", "BenchmarkFirstPlot; the kernel's start not timed"},
		{"kernelpool", "BenchmarkFirstPlot/forked", "ns/op", secPool, "first_plot_forked_gobench", "  the same, forked (the template imported matplotlib and drew a figure)", "ms", nsToMS, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/cold", "MiB-per-kernel-python3", secMemory, "idle_pss_python3_cold_gobench", "idle sandboxed python3 kernel, cold: PSS per kernel (6 alive, each ran 1+1)", "MiB", 1, "", "BenchmarkIdleKernelMemory; the kernel and its sandbox helpers"},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-per-kernel-python3", secMemory, "idle_pss_python3_forked_gobench", "  the same, forked: PSS per kernel (the template's shared pages divided among 6 kernels and it)", "MiB", 1, "", "falls as more kernels share the template: compare *per idle sandboxed kernel* (110 alive)"},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-private-per-kernel-python3", secMemory, "idle_private_python3_forked_gobench", "  forked: private memory per kernel (what one more kernel costs)", "MiB", 1, "≤ 25 MiB, aim 15 (issue 10)", "what one more idle kernel costs, however many share the template; PSS, which issue 10 names, depends on how many do"},
		{"kernelpool", "BenchmarkIdleKernelMemory/cold", "MiB-private-per-kernel-python3", secMemory, "idle_private_python3_cold_gobench", "  cold: private memory per kernel", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-template-python3", secMemory, "idle_template_python3_gobench", "  the python3 template's own PSS, with the 6 alive", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/cold", "MiB-per-kernel-sagemath", secMemory, "idle_pss_sagemath_cold_gobench", "idle sandboxed sagemath kernel, cold: PSS per kernel (6 alive, each ran 1+1)", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-per-kernel-sagemath", secMemory, "idle_pss_sagemath_forked_gobench", "  the same, forked: PSS per kernel", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-private-per-kernel-sagemath", secMemory, "idle_private_sagemath_forked_gobench", "  forked: private memory per kernel (what one more kernel costs)", "MiB", 1, "the same for sagemath (issue 10)", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/cold", "MiB-private-per-kernel-sagemath", secMemory, "idle_private_sagemath_cold_gobench", "  cold: private memory per kernel", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkIdleKernelMemory/forked", "MiB-template-sagemath", secMemory, "idle_template_sagemath_gobench", "  the sagemath template's own PSS, with the 6 alive", "MiB", 1, "", ""},
		{"kernelpool", "BenchmarkExecuteFloor", "kernelpool_p50_ms", secExecute, "floor_kernelpool_gobench", "execute floor, kernelpool.Execute on a sandboxed forked kernel (p50)", "ms", 1, "", "BenchmarkExecuteFloor: the three clients in turn, round by round"},
		{"kernelpool", "BenchmarkExecuteFloor", "jupyter_client_p50_ms", secExecute, "floor_jupyter_client_gobench", "  jupyter_client on the same kernel's own sockets (p50)", "ms", 1, "the floor, measured with the fastest independent client (issue 10)", ""},
		{"kernelpool", "BenchmarkExecuteFloor", "jupyter_client_own_kernel_p50_ms", secExecute, "floor_jupyter_client_own_gobench", "  jupyter_client on an ipykernel its KernelManager launched (unsandboxed, tcp; p50)", "ms", 1, "", "as Jupyter Server launches kernels"},
		{"gateway", "BenchmarkIdleConnections/default", "accepted_conns", secMemory, "idle_conns_accepted", "idle connections from one address held open (of 10,000 tried)", "", 1, "", "BenchmarkIdleConnections: the rest refused by the per-address cap"},
		{"gateway", "BenchmarkIdleConnections/default", "rss_MiB", secMemory, "idle_conns_rss", "  gateway RSS meanwhile", "MiB", 1, "10,000 idle connections (issue 11)", ""},
		{"gateway", "BenchmarkIdleConnections/uncapped", "rss_MiB", secMemory, "idle_conns_rss_uncapped", "    the same with no per-address cap (all 10,000 held)", "MiB", 1, "", "what the cap saves"},
		{"gateway", "BenchmarkIdleConnections/default", "fds", secMemory, "idle_conns_fds", "  gateway open file descriptors meanwhile", "", 1, "", ""},
		{"gateway", "BenchmarkIdleConnections/uncapped", "fds", secMemory, "idle_conns_fds_uncapped", "    the same with no per-address cap", "", 1, "", ""},
		{"gateway", "BenchmarkIdleConnections/default", "healthz_p50_ms", secMemory, "idle_conns_healthz_p50", "  GET /healthz from another address meanwhile (p50)", "ms", 1, "", "a new connection each time"},
		{"gateway", "BenchmarkIdleConnections/default", "healthz_p99_ms", secMemory, "idle_conns_healthz_p99", "  the same (p99)", "ms", 1, "", ""},
		{"sandbox", "BenchmarkColdStart/none", "ns/op", secPool, "sandbox_import_none", "python3 -c 'import ipykernel', unsandboxed", "ms", nsToMS, "", "process start to exit"},
		{"sandbox", "BenchmarkColdStart/bwrap", "ns/op", secPool, "sandbox_import_bwrap", "python3 -c 'import ipykernel', in bwrap", "ms", nsToMS, "", ""},
		{"sandbox", "BenchmarkTrue/none", "ns/op", secPool, "sandbox_true_none", "/usr/bin/true, unsandboxed", "ms", nsToMS, "", ""},
		{"sandbox", "BenchmarkTrue/bwrap", "ns/op", secPool, "sandbox_true_bwrap", "/usr/bin/true, in bwrap (the sandbox's own cost)", "ms", nsToMS, "", ""},
		{"sandbox", "BenchmarkIdleMemory/none", "MiB-kernel", secMemory, "idle_import_pss_none", "idle python that imported ipykernel, PSS, unsandboxed", "MiB", 1, "", ""},
		{"sandbox", "BenchmarkIdleMemory/bwrap", "MiB-kernel", secMemory, "idle_import_pss_bwrap", "the same in bwrap: python PSS", "MiB", 1, "", ""},
		{"sandbox", "BenchmarkIdleMemory/bwrap", "MiB-bwrap", secMemory, "idle_bwrap_pss", "  plus its bwrap processes, PSS", "MiB", 1, "", ""},
		{"storage", "BenchmarkPermalinkSaveNew", "ns/op", secStorage, "permalink_save_new", "Permalinks.Save, new cell (driver → FerretDB)", "ms", nsToMS, "", ""},
		{"storage", "BenchmarkPermalinkSaveExisting", "ns/op", secStorage, "permalink_save_existing", "Permalinks.Save, existing cell (dedupe)", "ms", nsToMS, "", ""},
		{"storage", "BenchmarkPermalinkGet", "ns/op", secStorage, "permalink_get", "Permalinks.Get", "ms", nsToMS, "", ""},
		{"storage", "BenchmarkQueueEnqueue", "ns/op", secStorage, "permalink_enqueue", "write-behind Queue.Enqueue (what a computation waits for)", "µs", nsToUS, "", ""},
		{"storage", "BenchmarkUpload10MB", "MB/s", secStorage, "gridfs_upload", "GridFS upload of a 10 MiB file (Watcher.UploadChanged)", "MB/s", 1, "", ""},
		{"storage", "BenchmarkDownload10MB", "MB/s", secStorage, "gridfs_download", "GridFS download of a 10 MiB file", "MB/s", 1, "", ""},
		{"jupytermsg", "BenchmarkWS/decode/text", "ns/op", secCodec, "ws_decode_text", "decode a legacy JSON stream frame", "µs", nsToUS, "", ""},
		{"jupytermsg", "BenchmarkWS/encode/text", "ns/op", secCodec, "ws_encode_text", "encode a legacy JSON stream frame", "µs", nsToUS, "", ""},
		{"jupytermsg", "BenchmarkWS/encode/v1", "ns/op", secCodec, "ws_encode_v1", "encode a v1 binary stream frame", "µs", nsToUS, "", ""},
		{"jupytermsg", "BenchmarkWS/encode/text-1MiB-png", "MB/s", secCodec, "ws_encode_text_png", "encode a 1 MiB PNG display_data, legacy JSON", "MB/s", 1, "", ""},
		{"jupytermsg", "BenchmarkWS/encode/v1-1MiB-png", "MB/s", secCodec, "ws_encode_v1_png", "encode a 1 MiB PNG display_data, v1", "MB/s", 1, "", ""},
	}
	for _, p := range picks {
		b, ok := goBench(e.gobench, "/"+p.pkg, p.name)
		if !ok {
			if p.name != "BenchmarkColdStart/sagemath" {
				e.rec.problem("Go benchmark %s %s missing from the run", p.pkg, p.name)
			}
			continue
		}
		v, ok := b.Metrics[p.metric]
		if !ok {
			e.rec.problem("Go benchmark %s %s has no %s", p.pkg, p.name, p.metric)
			continue
		}
		note := p.note
		switch {
		case b.N <= 0:
		case strings.HasSuffix(p.metric, "_ms") || p.metric == "ratio":
			note = strings.TrimPrefix(note+fmt.Sprintf("; %d rounds", b.N), "; ")
		case p.metric == "ns/op" || p.metric == "MB/s" || strings.HasPrefix(p.metric, "MiB-"):
			note = strings.TrimPrefix(note+fmt.Sprintf("; mean of %d", b.N), "; ")
		}
		e.rec.valueFrom(p.section, p.id, p.label, p.unit, v*p.scale, p.target, note, "go test -bench "+p.name+" ./"+p.pkg)
	}
	if b, ok := goBench(e.gobench, "/kernelpool", "BenchmarkExecuteZMQ"); ok {
		e.zmqFloor = b.Metrics["ns/op"] * nsToMS
	} else {
		e.rec.problem("Go benchmark kernelpool BenchmarkExecuteZMQ missing from the run")
	}
	ratio := func(pkg, slow, fast, metric, id, label, target string) {
		a, ok1 := goBench(e.gobench, "/"+pkg, slow)
		b, ok2 := goBench(e.gobench, "/"+pkg, fast)
		if ok1 && ok2 && b.Metrics[metric] > 0 {
			e.rec.valueFrom(secPool, id, label, "×", a.Metrics[metric]/b.Metrics[metric], target, "", "go test -bench "+slow+" ./"+pkg)
		}
	}
	ratio("kernelpool", "BenchmarkSandboxedStart/cold", "BenchmarkSandboxedStart/forked", "ns/op", "start_cold_over_forked",
		"python3 launch → ready in bwrap, cold / forked", "")
	ratio("kernelpool", "BenchmarkFirstPlot/cold", "BenchmarkFirstPlot/forked", "ns/op", "first_plot_cold_over_forked",
		"first plot on a fresh kernel, cold / forked", "")
	if b, ok := goBench(e.gobench, "/kernelpool", "BenchmarkExecuteFloor"); ok && b.Metrics["jupyter_client_p50_ms"] > 0 {
		e.rec.valueFrom(secExecute, "floor_ratio", "  kernelpool / jupyter_client on the same kernel (p50)", "×",
			b.Metrics["kernelpool_p50_ms"]/b.Metrics["jupyter_client_p50_ms"], "", "below 1: cellgate's own client is the faster one",
			"go test -bench BenchmarkExecuteFloor ./kernelpool")
	}
	none, ok1 := goBench(e.gobench, "/sandbox", "BenchmarkColdStart/none")
	bw, ok2 := goBench(e.gobench, "/sandbox", "BenchmarkColdStart/bwrap")
	if ok1 && ok2 && none.Metrics["ns/op"] > 0 {
		e.rec.valueFrom(secPool, "sandbox_import_ratio", "  bwrap / unsandboxed", "×", bw.Metrics["ns/op"]/none.Metrics["ns/op"], "", "",
			"go test -bench BenchmarkColdStart ./sandbox")
	}
}
