// Package e2e tests the browser client end to end: a real cellgate
// (gateway, kernel pool with real kernels, the static client) on
// 127.0.0.1, a second origin that embeds cells, and headless Debian
// Chromium driven by playwright-core (run.mjs).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/static"
	"github.com/cellgate/cellgate/storage"
)

// chromium is Debian's browser; CELLGATE_CHROMIUM overrides it.
func chromium() string {
	if p := os.Getenv("CELLGATE_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// startCellgate serves the gateway and the client as cmd/cellgate does.
func startCellgate(t testing.TB, ready map[string]int) (*httptest.Server, []string) {
	t.Helper()
	return startCellgateWith(t, ready, 12, 60*time.Second)
}

// startCellgateWith is startCellgate with at most maxKernels kernels, whose
// requests wait leaseTimeout for one before the server answers 503.
func startCellgateWith(t testing.TB, ready map[string]int, maxKernels int, leaseTimeout time.Duration) (*httptest.Server, []string) {
	t.Helper()
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	if _, ok := specs["python3"]; !ok {
		t.Fatal("python3 kernelspec missing: run make deps")
	}
	for name := range ready {
		if _, ok := specs[name]; !ok {
			delete(ready, name)
		}
	}
	root, err := os.MkdirTemp("/tmp", "cge2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	pool, err := kernelpool.New(kernelpool.Config{
		Specs: specs, Ready: ready, MaxKernels: maxKernels,
		Kernel: kernelpool.KernelConfig{
			Launcher: sandbox.None{}, RuntimeRoot: filepath.Join(root, "r"), WorkRoot: filepath.Join(root, "w"),
			ShutdownGrace: time.Second, Log: log,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	startCtx, cancelStart := context.WithTimeout(context.Background(), time.Minute)
	defer cancelStart()
	db, err := storage.StartEmbedded(startCtx, storage.EmbeddedConfig{Dir: filepath.Join(root, "db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.Open(startCtx, storage.Config{URI: db.URI(), Logger: log, Embedded: db})
	if err != nil {
		t.Fatal(err)
	}
	queue := storage.NewQueue(context.Background(), store.Permalinks(), storage.QueueConfig{Logger: log})
	gw := gateway.New(gateway.Config{
		Log: log, LeaseTimeout: leaseTimeout, PollWait: 10 * time.Second,
		Storage: gateway.Storage{Permalinks: queue, Results: store.Results(), Files: store.Files(), Ping: store.Ping},
	}, pool)
	srv := httptest.NewServer(static.Wrap(gw.Handler()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = gw.Drain(ctx)
		srv.Close()
		_ = pool.Close(ctx)
		_ = queue.Close(ctx)
		_ = store.Close(ctx)
		_ = db.Close()
	})
	var names []string
	for name := range ready {
		names = append(names, name)
	}
	return srv, names
}

// embedPages is the second origin: pages that embed cells from .Base (and
// from .Capped, a cellgate with room for two Sage kernels).
var embedPages = template.Must(template.New("").Parse(`
{{define "embed"}}<!doctype html><html><head><meta charset="utf-8"><title>embedding page</title></head>
<body><h1>A page on another origin</h1>
<div id="c1">print(6 * 7)</div>
<div class="many">print("first")</div>
<div class="many">print("second")</div>
<script src="{{.Base}}static/embed.js"></script>
<script>
cellgate.makeCell({inputLocation: '#c1', autoeval: true, hide: ['share']});
window.many = cellgate.makeCells('.many', {linked: true});
</script></body></html>{{end}}
{{define "sagecell"}}<!doctype html><html><head><meta charset="utf-8"><title>sage cell page</title>
<script src="{{.Base}}embedded_sagecell.js"></script></head>
<body><div class="compute"><script type="text/x-sage">print("via " + "makeSagecell")</script></div>
<script>
sagecell.makeSagecell({inputLocation: 'div.compute', languages: ['python'], evalButtonText: 'Run', autoeval: true});
</script></body></html>{{end}}
{{define "sagehead"}}<!doctype html><html><head><meta charset="utf-8"><title>makeSagecell in head</title>
<link rel="stylesheet" href="{{.Base}}static/sagecell_embed.css">
<script src="{{.Base}}embedded_sagecell.js"></script>
<script>
// As the Sage cell's documentation, its Sphinx and DokuWiki plugins and its
// linked.html test call it: in <head>, before the elements exist.
window.early = sagecell.makeSagecell({inputLocation: '#mycell', languages: ['python'], autoeval: true});
window.linked = sagecell.makeSagecell({inputLocation: '.linked', languages: ['python'], linked: true});
window.single = singlecell.makeSinglecell({inputLocation: '#old', languages: ['python'], evalButtonText: 'Go'});
</script></head>
<body><div id="mycell"><script type="text/x-sage">print("made in head", 6 * 7)</script></div>
<div class="linked"><script type="text/x-sage">shared = 5</script></div>
<div class="linked"><script type="text/x-sage">print("linked sees", shared)</script></div>
<div id="old">print("singlecell")</div>
</body></html>{{end}}
{{define "jquery"}}<!doctype html><html><head><meta charset="utf-8"><title>jQuery ready</title>
<script src="{{.Base}}embedded_sagecell.js"></script>
<script>
$(function () {
  window.readyRan = true;
  window.viaReady = sagecell.makeSagecell({inputLocation: '#jq', languages: ['python'], autoeval: true});
});
</script></head>
<body><div id="jq">print("jQuery", "ready")</div>
<div id="gone">print("to be deleted")</div>
<div id="form">print("moved and back")</div>
<img id="spin" src="{{.Base}}static/spinner.gif" alt="spinner">
</body></html>{{end}}
{{define "ownjquery"}}<!doctype html><html><head><meta charset="utf-8"><title>a page with its own jQuery</title>
<script src="{{.Base}}static/jquery.min.js"></script>
<script>jQuery.pagesOwn = true;</script>
<script src="{{.Base}}embedded_sagecell.js"></script></head>
<body><div id="own">print("own jQuery kept")</div>
<script>sagecell.makeSagecell({inputLocation: '#own', languages: ['python'], autoeval: true});</script>
</body></html>{{end}}
{{define "stored"}}<!doctype html><html><head><meta charset="utf-8"><title>a page that has a stored result</title></head>
<body><div id="given">print("live", 6 * 7)</div>
<script src="{{.Base}}static/embed.js"></script>
</body></html>{{end}}
{{define "languages"}}<!doctype html><html><head><meta charset="utf-8"><title>the Sage cell's languages</title>
<script src="{{.Base}}embedded_sagecell.js"></script>
<script>
// As the Sage cell documents its languages option (defaultLanguage: the
// language a cell starts in).
var langs = ['sage', 'gp', 'html'];
window.cells = {
  gp: sagecell.makeSagecell({inputLocation: '#gp', languages: langs, defaultLanguage: 'gp', autoeval: true}),
  html: sagecell.makeSagecell({inputLocation: '#html', languages: langs, defaultLanguage: 'html', autoeval: true}),
  octave: sagecell.makeSagecell({inputLocation: '#octave', languages: ['sage', 'octave'], defaultLanguage: 'octave', autoeval: true}),
};
</script></head>
<body><div id="gp"><script type="text/x-sage">2^100</script></div>
<div id="html"><script type="text/x-sage"><b>hi</b></script></div>
<div id="octave"><script type="text/x-sage">disp(1 + 1)</script></div>
</body></html>{{end}}
{{define "sockjs"}}<!doctype html><html><head><meta charset="utf-8"><title>the Sage cell's transport: sockjs-client</title>
<script src="/sockjs.min.js"></script></head>
<body><p>transport: <span id="transport"></span> <span id="state">starting</span></p><pre id="out"></pre>
<script>
// As the Sage cell's front end (its session.js and multisockjs.js): POST
// /kernel, one SockJS connection to /sockjs for the page, the kernel's
// messages as "<kernel id>/channels,<message>" both ways. ?transport= is
// the one transport sockjs-client may use.
(async function () {
  var base = {{.Base}};
  var transport = new URLSearchParams(location.search).get('transport');
  var out = document.getElementById('out');
  var state = document.getElementById('state');
  function fail(text) {
    state.textContent = 'failed: ' + text;
    document.body.dataset.done = 'failed';
  }
  var cellSession = 'sockjs-page-' + Math.random().toString(16).slice(2);
  var resp = await fetch(base + 'kernel', {
    method: 'POST', credentials: 'include',
    body: new URLSearchParams({CellSessionID: cellSession, timeout: '0', accepted_tos: 'true', kernel_name: 'python3'}),
  });
  if (!resp.ok) return fail('POST /kernel: ' + resp.status + ' ' + (await resp.text()));
  var kernel = (await resp.json()).id;
  var prefix = kernel + '/channels';
  var sock = new SockJS(base + 'sockjs?CellSessionID=' + cellSession, null, {transports: [transport]});
  var msgId = 'execute-' + Math.random().toString(16).slice(2);
  var replied = false, idle = false;
  sock.onopen = function () {
    document.getElementById('transport').textContent = sock.transport;
    document.body.dataset.transport = sock.transport;
    state.textContent = 'running';
    sock.send(prefix + ',' + JSON.stringify({
      channel: 'shell',
      header: {msg_id: msgId, msg_type: 'execute_request', session: cellSession, username: '', version: '5.3'},
      parent_header: {}, metadata: {},
      content: {code: 'print("over sockjs", 6 * 7)\nfor i in range(3): print("line", i)', silent: false, store_history: false, user_expressions: {}, allow_stdin: false},
    }));
  };
  sock.onmessage = function (e) {
    var i = e.data.indexOf(',');
    if (e.data.slice(0, i) !== prefix) return;
    var msg = JSON.parse(e.data.slice(i + 1));
    if (msg.error) return fail(msg.message);
    if (!msg.parent_header || msg.parent_header.msg_id !== msgId) return;
    var type = msg.header.msg_type;
    if (type === 'stream' && msg.content.name === 'stdout') out.textContent += msg.content.text;
    if (type === 'execute_reply') { replied = true; document.body.dataset.status = msg.content.status; }
    if (type === 'status' && msg.content.execution_state === 'idle') idle = true;
    if (replied && idle && !document.body.dataset.done) {
      state.textContent = 'done';
      document.body.dataset.done = 'ok';
      sock.close();
    }
  };
  sock.onclose = function (e) {
    if (!document.body.dataset.done) fail('closed: ' + e.code + ' ' + e.reason);
  };
})().catch(function (err) {
  document.getElementById('state').textContent = 'failed: ' + err.message;
  document.body.dataset.done = 'failed';
});
</script></body></html>{{end}}
{{define "eight"}}<!doctype html><html><head><meta charset="utf-8"><title>eight Sage cells</title>
<script src="{{.Capped}}embedded_sagecell.js"></script>
<script>sagecell.makeSagecell({inputLocation: 'div.sage', autoeval: true, hide: ['permalink']});</script></head>
<body>{{range .Eight}}<div class="sage"><script type="text/x-sage">print("cell {{.}}:", factor({{.}} * 2^10 + 1))</script></div>
{{end}}</body></html>{{end}}
`))

// sockjsClient is sockjs-client's browser bundle (a devDependency of
// static, installed by scripts/web-build.sh).
const sockjsClient = "../node_modules/sockjs-client/dist/sockjs.min.js"

// pageData is what the second origin's pages are made from.
type pageData struct {
	Base, Capped string
	Eight        []int
}

func startOther(t testing.TB, base, capped string) *httptest.Server {
	mux := http.NewServeMux()
	data := pageData{Base: base, Capped: capped, Eight: []int{1, 2, 3, 4, 5, 6, 7, 8}}
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			if err := embedPages.ExecuteTemplate(w, name, data); err != nil {
				t.Error(err)
			}
		}
	}
	for _, name := range []string{"embed", "sagecell", "sagehead", "jquery", "ownjquery", "eight", "stored", "languages", "sockjs"} {
		mux.HandleFunc("/"+name+".html", page(name))
	}
	// The unchanged sockjs-client, served by this origin (not by cellgate),
	// as a Sage-cell page bundles its own copy.
	mux.HandleFunc("/sockjs.min.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, sockjsClient)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// startBlockingProxy is a proxy in front of base that refuses websocket
// upgrades, as some corporate proxies do: clients that reach cellgate
// through it must fall back to long-polling. It keeps the Host header, so
// the ws_url that cellgate answers points at the proxy too.
func startBlockingProxy(t testing.TB, base string) *httptest.Server {
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "websockets are blocked by this proxy", http.StatusForbidden)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// wants reports whether the browser tests to run include the one named
// name: CELLGATE_E2E_ONLY is words separated by "|", and a test runs when
// its name contains one of them.
func wants(name string) bool {
	only := os.Getenv("CELLGATE_E2E_ONLY")
	if only == "" {
		return true
	}
	for _, w := range strings.Split(only, "|") {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// result is one line of run.mjs's report.
type result struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, fail, skip
	Error  string `json:"error"`
	Ms     int    `json:"ms"`
}

func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: slow (real kernels, chromium); run make test")
	}
	if _, err := os.Stat(chromium()); err != nil {
		t.Fatalf("Debian chromium is needed at %s (apt-get install chromium): %v", chromium(), err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is needed for the browser tests (run make deps)")
	}
	if _, err := os.Stat("../node_modules/playwright-core/package.json"); err != nil {
		t.Fatal("static/node_modules is missing: run scripts/web-build.sh (make deps)")
	}
	if _, err := os.Stat(sockjsClient); err != nil {
		t.Fatal("sockjs-client is missing from static/node_modules: run scripts/web-build.sh (make deps)")
	}
	if !static.New().Built() {
		t.Fatal("the browser client is not built: run scripts/web-build.sh (make build)")
	}

	srv, kernels := startCellgate(t, map[string]int{"python3": 3, "sagemath": 1})
	base := srv.URL + "/"
	// A server with room for two Sage kernels, whose requests for a kernel
	// wait 2 s for one and then get 503: a page of eight Sage cells must
	// wait its turn and get them all evaluated.
	cappedURL := ""
	if slices.Contains(kernels, "sagemath") && wants("eight autoeval Sage cells on one page") {
		capped, _ := startCellgateWith(t, map[string]int{"sagemath": 1}, 2, 2*time.Second)
		cappedURL = capped.URL + "/"
	}
	other := startOther(t, base, cappedURL)
	blocked := startBlockingProxy(t, base)
	// Screenshots for humans go to test-output/ (not tracked: PNGs differ
	// from run to run); CELLGATE_SCREENSHOTS=bench/screenshots refreshes
	// the committed ones.
	shots, _ := filepath.Abs("../../test-output/screenshots")
	if dir := os.Getenv("CELLGATE_SCREENSHOTS"); dir != "" {
		shots, _ = filepath.Abs(filepath.Join("../..", dir))
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "run.mjs")
	cmd.Env = append(os.Environ(),
		"CELLGATE_URL="+base,
		"OTHER_URL="+other.URL+"/",
		"BLOCKED_URL="+blocked.URL+"/",
		"CAPPED_URL="+cappedURL,
		"CHROMIUM="+chromium(),
		"SCREENSHOTS="+shots,
		"KERNELS="+strings.Join(kernels, ","),
		"ONLY="+os.Getenv("CELLGATE_E2E_ONLY"),
	)
	cmd.Stderr = &logWriter{t: t, prefix: "node: "}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	ran := 0
	for sc.Scan() {
		line := sc.Text()
		js, ok := strings.CutPrefix(line, "RESULT ")
		if !ok {
			t.Log(line)
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			t.Errorf("bad result line %q: %v", line, err)
			continue
		}
		ran++
		t.Run(r.Name, func(t *testing.T) {
			switch r.Status {
			case "pass":
				t.Logf("passed in %d ms", r.Ms)
			case "skip":
				t.Skip(r.Error)
			default:
				t.Errorf("failed after %d ms: %s", r.Ms, r.Error)
			}
		})
	}
	if err := cmd.Wait(); err != nil && (ran == 0 || !t.Failed()) {
		// Failed tests were reported above; anything else is the runner's.
		t.Fatalf("run.mjs: %v", err)
	}
	if ran == 0 {
		t.Fatal("run.mjs reported no tests")
	}
}

type logWriter struct {
	t      testing.TB
	prefix string
}

func (w *logWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(p), nil
}

// TestServe runs the test server for a human when CELLGATE_E2E_SERVE is
// set (go test ./static/e2e -run TestServe -timeout 0): the addresses are
// logged and it serves until the timeout or ^C.
func TestServe(t *testing.T) {
	if os.Getenv("CELLGATE_E2E_SERVE") == "" {
		t.Skip("set CELLGATE_E2E_SERVE=1 to serve the client for manual testing")
	}
	srv, _ := startCellgate(t, map[string]int{"python3": 2, "sagemath": 1})
	other := startOther(t, srv.URL+"/", srv.URL+"/")
	fmt.Printf("cellgate: %s/\nother origin: %s/embed.html %s/sagecell.html\n", srv.URL, other.URL, other.URL)
	d, _ := time.ParseDuration(os.Getenv("CELLGATE_E2E_SERVE"))
	if d <= 0 {
		d = time.Hour
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
