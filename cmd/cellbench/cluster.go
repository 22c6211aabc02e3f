package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cluster"
	"github.com/cellgate/cellgate/deploy"
	"github.com/cellgate/cellgate/deploy/localcluster"
)

const secCluster = "Cluster: three instances on one database behind HAProxy (deploy/haproxy.cfg)"

// clusterSize is how many instances the cluster phase runs.
const clusterSize = 3

// benchCluster is the cluster phase's instances, balancers and clients.
type benchCluster struct {
	e         *env
	secret    string
	dbURI     string
	token     string
	instances []*localcluster.Instance
	apis      []*api // one per instance, direct
	front1    *api   // haproxy over the first instance alone
	front3    *api   // haproxy over all three
	restarts  int
}

// phaseCluster runs three cellgate instances as deployed (bwrap, the default pool, the cluster
// package's default heartbeat and expiry) on one FerretDB reached over TCP, with Debian's
// haproxy in front of them configured by deploy/haproxy.cfg as shipped (its health-check
// timing included), and times what the cluster adds: the hop to a session's owner, a new
// session through the balancer with one instance and with three, how soon the clients of a
// killed instance are told, and how soon the balancer stops sending to an instance on SIGTERM.
func (e *env) phaseCluster(ctx context.Context) error {
	dir := filepath.Join(e.tmp, "cluster")
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	_ = os.Chmod(dir, 0o711)
	// The database as the cluster tests run it: FerretDB as a process of its own
	// (cmd/cellgate-ferretdb, built from this module: cellbench runs from its root) on a
	// throwaway PostgreSQL cluster, with PostgreSQL's own durability settings.
	bin, err := localcluster.BuildFerretDB(ctx, ".", dir)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	db, err := localcluster.StartDatabase(ctx, bin, localcluster.PostgreSQLConfig{})
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer db.Stop()
	bc := &benchCluster{e: e, secret: "cellbench-" + randomHex(16), dbURI: db.URI(), token: "cellbench-" + randomHex(12)}
	defer bc.stopAll()
	for i := range clusterSize {
		in, err := bc.start(fmt.Sprintf("cg%d", i+1), "")
		if err != nil {
			return err
		}
		bc.instances = append(bc.instances, in)
		bc.apis = append(bc.apis, &api{base: in.URL(), token: bc.token, http: newHTTPClient()})
	}
	for _, in := range bc.instances {
		if err := in.WaitReady(ctx); err != nil {
			return err
		}
	}
	shipped := deploy.HAProxyConfig()
	var addrs []string
	for _, in := range bc.instances {
		addrs = append(addrs, in.Addr)
	}
	for _, f := range []struct {
		front   **api
		servers []string
	}{{&bc.front1, addrs[:1]}, {&bc.front3, addrs}} {
		addr, err := localcluster.FreeAddr()
		if err != nil {
			return err
		}
		hdir, err := os.MkdirTemp(dir, "haproxy")
		if err != nil {
			return err
		}
		h, err := localcluster.StartHAProxy(shipped, hdir, localcluster.HAProxyOptions{Front: addr, Servers: f.servers})
		if err != nil {
			return err
		}
		defer h.Stop()
		*f.front = &api{base: "http://" + addr + "/", token: bc.token, http: newHTTPClient()}
	}
	if err := bc.waitPicked(ctx, bc.front3, bc.ids()...); err != nil {
		return err
	}
	if err := bc.waitPicked(ctx, bc.front1, "cg1"); err != nil {
		return err
	}
	def := cluster.DefaultConfig()
	e.clusterShown = fmt.Sprintf("%d × `%s`, FerretDB (`cellgate-ferretdb`, its own process) on PostgreSQL over TCP, cluster heartbeat %s and expiry %s (cluster.DefaultConfig); haproxy health checks `%s`",
		clusterSize, bc.shownArgs(), def.Heartbeat, def.Expiry, checkTiming(shipped))

	progress("instances ready; hop")
	if err := bc.hop(ctx); err != nil {
		return fmt.Errorf("hop: %w", err)
	}
	progress("new sessions through haproxy")
	if err := bc.newSessions(ctx); err != nil {
		return fmt.Errorf("new sessions: %w", err)
	}
	progress("SIGKILL and SIGTERM")
	return bc.stops(ctx, def)
}

// progress says on stderr where the cluster phase is.
func progress(what string) {
	fmt.Fprintf(os.Stderr, "cellbench: %s: cluster: %s\n", time.Now().Format("15:04:05"), what)
}

// ids names the instances now running.
func (bc *benchCluster) ids() []string {
	var out []string
	for _, in := range bc.instances {
		out = append(out, in.ID)
	}
	return out
}

// instanceArgs are each instance's flags besides the cluster's own (localcluster adds those).
func (bc *benchCluster) instanceArgs() []string {
	return []string{"--sandbox", "bwrap", "--pool", bc.e.opts.pool, "--max-kernels", "40", "--trust-proxy",
		"--log-level", "warn", "--token", bc.token}
}

func (bc *benchCluster) shownArgs() string {
	args := strings.Join(bc.instanceArgs(), " ")
	return strings.Replace(args, bc.token, "<random>", 1)
}

// start runs bin/cellgate serve as cluster instance id, at addr ("" a free port).
func (bc *benchCluster) start(id, addr string) (*localcluster.Instance, error) {
	dir := filepath.Join(bc.e.tmp, "cluster", id)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, err
	}
	return localcluster.StartInstance(localcluster.InstanceConfig{
		ID: id, Addr: addr, DatabaseURI: bc.dbURI, Secret: bc.secret, Dir: dir, Args: bc.instanceArgs(),
		Command: func(args []string) *exec.Cmd {
			cmd := exec.Command(bc.e.opts.cellgate, args...)
			cmd.Env = scrubbedEnv()
			return cmd
		},
	})
}

// stopAll stops every instance still running (SIGTERM: each drains what it still holds).
func (bc *benchCluster) stopAll() {
	for _, in := range bc.instances {
		select {
		case <-in.Exited():
			continue
		default:
		}
		_ = in.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-in.Exited():
		case <-time.After(60 * time.Second):
			bc.e.rec.problem("cluster: %s did not stop within 60 s of SIGTERM; killed", in.ID)
			_ = in.Kill()
			<-in.Exited()
		}
	}
}

// picked is the instance that answered a request through a balancer first (Cellgate-Instance).
func picked(a *api, path string) (string, error) {
	resp, err := a.http.Get(a.base + path)
	if err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if v := resp.Header.Values("Cellgate-Instance"); len(v) > 0 {
		return v[0], nil
	}
	return "", fmt.Errorf("GET %s: HTTP %d without Cellgate-Instance", path, resp.StatusCode)
}

// waitPicked waits until the balancer sends requests to every instance in ids.
func (bc *benchCluster) waitPicked(ctx context.Context, front *api, ids ...string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		seen := map[string]bool{}
		for range 2 * len(ids) {
			if id, err := picked(front, "readyz"); err == nil {
				seen[id] = true
			}
		}
		all := true
		for _, id := range ids {
			all = all && seen[id]
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("haproxy at %s does not send requests to all of %v", front.base, ids)
}

// waitPoolsFull waits until every instance's pool is full.
func (bc *benchCluster) waitPoolsFull() error {
	for i, a := range bc.apis {
		if _, err := a.waitPoolFull(2 * time.Minute); err != nil {
			return fmt.Errorf("%s: %w", bc.instances[i].ID, err)
		}
	}
	return nil
}

// sessionOn starts a Sage-cell session on instance i, asked of it directly; with its pool full
// it is not placed elsewhere, which the answer's Cellgate-Instance confirms.
func (bc *benchCluster) sessionOn(ctx context.Context, i int) (kernelAnswer, error) {
	a := bc.apis[i]
	if _, err := a.waitPoolFull(2 * time.Minute); err != nil {
		return kernelAnswer{}, err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"kernel",
		strings.NewReader(url.Values{"timeout": {"600"}, "kernel_name": {"python3"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := a.http.Do(req)
	if err != nil {
		return kernelAnswer{}, err
	}
	defer resp.Body.Close()
	var k kernelAnswer
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &k) != nil || k.ID == "" {
		return k, fmt.Errorf("POST /kernel to %s: HTTP %d %.200s", bc.instances[i].ID, resp.StatusCode, data)
	}
	if via := resp.Header.Values("Cellgate-Instance"); len(via) != 1 || via[0] != bc.instances[i].ID {
		_ = a.deleteKernel(k.ID)
		return k, fmt.Errorf("POST /kernel to %s served by %v", bc.instances[i].ID, via)
	}
	return k, nil
}

// hop times execute round trips on one session over a websocket to its owner and over one to
// another instance, which forwards it, interleaved round by round.
func (bc *benchCluster) hop(ctx context.Context) error {
	e := bc.e
	k, err := bc.sessionOn(ctx, 0)
	if err != nil {
		return err
	}
	defer bc.apis[0].deleteKernel(k.ID)
	dial := func(i int) (*wsClient, error) {
		return dialWS(ctx, "ws://"+bc.instances[i].Addr+"/kernel/"+k.ID+"/channels?session_id="+randomHex(8), nil)
	}
	owner, err := dial(0)
	if err != nil {
		return err
	}
	defer owner.close()
	other, err := dial(1)
	if err != nil {
		return err
	}
	defer other.close()
	paths := []struct {
		name string
		c    client
	}{{"owner", owner}, {"forwarded", other}}
	samples := map[string][]float64{}
	for r := -5; r < e.opts.clusterRounds; r++ { // 5 warm-up rounds
		for j := range paths {
			p := paths[(r+5+j)%len(paths)]
			t, err := execute(ctx, p.c, "1+1", false)
			if err != nil {
				return fmt.Errorf("execute via %s: %w", p.name, err)
			}
			if r >= 0 {
				samples[p.name] = append(samples[p.name], ms(max(t.reply, t.idle)))
			}
		}
	}
	o := e.rec.dist(secCluster, "cluster_execute_owner", "execute round trip of 1+1, websocket to the session's owner", "ms", samples["owner"], "",
		"Sage-cell websocket, interleaved with the next row")
	f := e.rec.dist(secCluster, "cluster_execute_forwarded", "  the same, websocket to another instance (forwarded to the owner)", "ms", samples["forwarded"], "",
		"the client's websocket ends on an instance that relays it over a websocket of its own to the owner")
	e.rec.value(secCluster, "cluster_hop_added_p50", "  added by the hop at p50", "ms", f.p50-o.p50, "", "")
	e.rec.value(secCluster, "cluster_hop_added_p99", "  added by the hop at p99", "ms", f.p99-o.p99, "", "")
	return nil
}

// newSessions times a reader opening a cell through the balancer (POST /kernel, the websocket
// at the ws_url it answers, 1+1 until its reply), alternating between the balancer over one
// instance and the one over three, every pool full before each.
func (bc *benchCluster) newSessions(ctx context.Context) error {
	e := bc.e
	samples := map[int][]float64{}
	for i := 0; i < 2*e.opts.clusterSessions; i++ {
		if err := bc.waitPoolsFull(); err != nil {
			return err
		}
		front, n := bc.front1, 1
		if i%2 == 1 {
			front, n = bc.front3, clusterSize
		}
		fe := *e
		fe.api = front
		st, err := fe.oneSession(ctx, reader(60+n, i))
		if err != nil {
			return fmt.Errorf("session %d through haproxy over %d: %w", i, n, err)
		}
		samples[n] = append(samples[n], ms(st.total))
	}
	e.rec.dist(secCluster, "cluster_session_1", "new session → first 1+1 reply through HAProxy, 1 instance", "ms", samples[1], "",
		"POST /kernel + websocket + execute, pools full; alternating with the next row")
	e.rec.dist(secCluster, "cluster_session_3", fmt.Sprintf("  the same, %d instances", clusterSize), "ms", samples[clusterSize], "",
		"round robin: the POST and the websocket land on any instance, which forwards them when it is not the owner")
	return nil
}

// stops times, each -cluster-stops times on the last instance: how soon the clients of an
// instance killed with SIGKILL are told that their session ended (a long-poll client asking
// through the balancer), and on SIGTERM, how soon its /readyz answers 503 and the balancer
// sends it its last request, while it drains a session it holds. The instance is restarted at
// its address (which haproxy's configuration names) under a new id after each.
func (bc *benchCluster) stops(ctx context.Context, def cluster.Config) error {
	e := bc.e
	last := len(bc.instances) - 1
	var told, unready, lastPick []float64
	for round := 0; round < e.opts.clusterStops; round++ {
		d, err := bc.kill(ctx, last)
		if err != nil {
			return fmt.Errorf("kill %d: %w", round, err)
		}
		told = append(told, ms(d))
		progress(fmt.Sprintf("round %d: clients told %v after SIGKILL", round+1, d.Round(time.Millisecond)))
		if err := bc.restart(ctx, last); err != nil {
			return err
		}
		r, p, err := bc.term(ctx, last)
		if err != nil {
			return fmt.Errorf("SIGTERM %d: %w", round, err)
		}
		unready, lastPick = append(unready, ms(r)), append(lastPick, ms(p))
		progress(fmt.Sprintf("round %d: SIGTERM → /readyz 503 %v, last request %v", round+1, r.Round(time.Millisecond), p.Round(time.Millisecond)))
		if err := bc.restart(ctx, last); err != nil {
			return err
		}
	}
	e.rec.dist(secCluster, "cluster_kill_told", "SIGKILL of an instance → its session's long-poll client told it ended", "ms", told, "",
		fmt.Sprintf("through the balancer; the cluster expiry is %s, the heartbeat %s", def.Expiry, def.Heartbeat))
	e.rec.dist(secCluster, "cluster_term_readyz", "SIGTERM → the instance's /readyz 503", "ms", unready, "", "asked directly, every 10 ms")
	e.rec.dist(secCluster, "cluster_term_last_request", "SIGTERM → the balancer's last request to it", "ms", lastPick, "",
		"requests through haproxy every 10 ms; none reached it in the 3 s after; it was draining a live session meanwhile")
	return nil
}

// kill starts a session on instance i with a long-poll client through the balancer, kills the
// instance (its process group: a machine lost), and times until the client is told.
func (bc *benchCluster) kill(ctx context.Context, i int) (time.Duration, error) {
	k, err := bc.sessionOn(ctx, i)
	if err != nil {
		return 0, err
	}
	poll := bc.front3.base + "kernel/" + k.ID + "/poll?client=cellbench&wait=1"
	if ended, err := pollEnded(ctx, bc.front3.http, poll); err != nil || ended {
		return 0, fmt.Errorf("session on %s before the kill: ended %v, %v", bc.instances[i].ID, ended, err)
	}
	killed := time.Now()
	if err := bc.instances[i].Kill(); err != nil {
		return 0, err
	}
	deadline := killed.Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if ended, _ := pollEnded(ctx, bc.front3.http, poll); ended {
			return time.Since(killed), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return 0, errors.New("its client was not told within 2 minutes")
}

// pollEnded asks a session's long-poll once: true once it answers that the session ended. A
// 503 (the owner unreachable, not yet known dead) or a connection refused is not an answer.
func pollEnded(ctx context.Context, hc *http.Client, u string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var p struct {
		Ended bool `json:"ended"`
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("HTTP %d %.200s", resp.StatusCode, data)
	}
	err = json.Unmarshal(data, &p)
	return p.Ended, err
}

// term holds a session on instance i, sends it SIGTERM and times until its /readyz answers 503
// and until the balancer's last request reaches it (none in the 3 s after), with requests
// through the balancer every 10 ms. Then the session is deleted, and the instance, drained,
// exits.
func (bc *benchCluster) term(ctx context.Context, i int) (unready, lastPick time.Duration, err error) {
	in := bc.instances[i]
	k, err := bc.sessionOn(ctx, i)
	if err != nil {
		return 0, 0, err
	}
	if err := bc.waitPicked(ctx, bc.front3, in.ID); err != nil {
		return 0, 0, err
	}
	termed := time.Now()
	if err := in.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, 0, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Since(termed) < time.Minute {
			if resp, err := bc.apis[i].http.Get(bc.apis[i].base + "readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable {
					unready = time.Since(termed)
					return
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	var lastAt time.Time
	for {
		id, err := picked(bc.front3, "kernelspecs")
		now := time.Now()
		if err == nil && id == in.ID {
			lastAt = now
		}
		if now.Sub(laterOf(termed, lastAt)) > 3*time.Second {
			break
		}
		select {
		case <-in.Exited():
			wg.Wait()
			return 0, 0, fmt.Errorf("%s exited while it held a session: %v", in.ID, in.Err())
		case <-ctx.Done():
			wg.Wait()
			return 0, 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	wg.Wait()
	if unready == 0 {
		return 0, 0, fmt.Errorf("%s's /readyz not 503 within a minute of SIGTERM", in.ID)
	}
	if lastAt.IsZero() {
		lastAt = termed // no request reached it after SIGTERM
	}
	if err := bc.apis[i].deleteKernel(k.ID); err != nil {
		return 0, 0, err
	}
	select {
	case <-in.Exited():
		if err := in.Err(); err != nil {
			bc.e.rec.problem("cluster: %s exited with %v after SIGTERM; log:\n%s", in.ID, err, in.Logs.Tail(20))
		}
	case <-time.After(time.Minute):
		return 0, 0, fmt.Errorf("%s still running a minute after its last session ended", in.ID)
	}
	return unready, lastAt.Sub(termed), nil
}

// restart starts instance i again at its address, under a new id (the old one's record may
// still be in the registry), and waits until the balancer sends it requests again.
func (bc *benchCluster) restart(ctx context.Context, i int) error {
	old := bc.instances[i]
	<-old.Exited()
	bc.restarts++
	in, err := bc.start(fmt.Sprintf("%s-r%d", strings.SplitN(old.ID, "-", 2)[0], bc.restarts), old.Addr)
	if err != nil {
		return err
	}
	bc.instances[i] = in
	if err := in.WaitReady(ctx); err != nil {
		return err
	}
	return bc.waitPicked(ctx, bc.front3, in.ID)
}

// checkTiming is the health-check timing of the shipped haproxy.cfg (its default-server line).
func checkTiming(cfg string) string {
	m := regexp.MustCompile(`(?m)^\s*default-server\s+(.*)$`).FindStringSubmatch(cfg)
	if m == nil {
		return "unknown"
	}
	return strings.TrimSpace(m[1])
}

func laterOf(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
