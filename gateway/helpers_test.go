package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/storage"
)

type testEnv struct {
	t    testing.TB
	pool *kernelpool.Pool
	gw   *Server
	http *httptest.Server
}

func newTestEnv(t testing.TB, ready int, maxKernels int, tweak func(*Config)) *testEnv {
	return newTestEnvWith(t, ready, maxKernels, tweak, nil)
}

func newTestEnvWith(t testing.TB, ready int, maxKernels int, tweak func(*Config), tweakKernel func(*kernelpool.KernelConfig)) *testEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real kernels: slow; make test runs it")
	}
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	if _, ok := specs["python3"]; !ok {
		t.Fatal("python3 kernelspec missing: run make deps")
	}
	root, err := os.MkdirTemp("/tmp", "cgw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	kcfg := kernelpool.KernelConfig{
		Launcher: sandbox.None{}, RuntimeRoot: filepath.Join(root, "r"), WorkRoot: filepath.Join(root, "w"),
		ShutdownGrace: time.Second, Log: log,
	}
	if tweakKernel != nil {
		tweakKernel(&kcfg)
	}
	// One registry, as cellgate serve makes it: the pool's series and the
	// gateway's on one /metrics.
	m := NewRegistry()
	pool, err := kernelpool.New(kernelpool.Config{
		Specs: specs, Ready: map[string]int{"python3": ready}, MaxKernels: maxKernels, Kernel: kcfg, Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A short detach grace keeps one-shot tests quick; the test of the
	// grace sets its own.
	// Sage-cell requests that name no kernel get python3, as the pool
	// keeps: a test of the Sage default (SageMath when installed) says so.
	cfg := Config{Log: log, LeaseTimeout: 60 * time.Second, Metrics: m, DetachGrace: 100 * time.Millisecond, SageCellDefaultKernel: "python3"}
	if tweak != nil {
		tweak(&cfg)
	}
	gw := New(cfg, pool)
	srv := httptest.NewServer(gw.Handler())
	env := &testEnv{t: t, pool: pool, gw: gw, http: srv}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := gw.Drain(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
		if err := pool.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return env
}

func (e *testEnv) url(path string) string { return e.http.URL + path }

func (e *testEnv) wsURL(path string) string {
	return "ws" + strings.TrimPrefix(e.http.URL, "http") + path
}

// do sends a request and decodes a JSON answer into out (if not nil).
func (e *testEnv) do(method, path, contentType, body string, out any) *http.Response {
	e.t.Helper()
	header := http.Header{}
	if contentType != "" {
		header.Set("Content-Type", contentType)
	}
	return e.doWith(method, path, header, body, out)
}

// doWith is do with request headers of the caller's choosing.
func (e *testEnv) doWith(method, path string, header http.Header, body string, out any) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url(path), strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp
}

func (e *testEnv) postForm(path string, form url.Values, out any) *http.Response {
	e.t.Helper()
	return e.do(http.MethodPost, path, "application/x-www-form-urlencoded", form.Encode(), out)
}

// wsClient is a Sage-cell websocket client for tests.
type wsClient struct {
	t       testing.TB
	conn    *websocket.Conn
	session string
}

func (e *testEnv) dialSage(id, query string) *wsClient {
	e.t.Helper()
	session := uuid.NewString()
	u := e.wsURL("/kernel/" + id + "/channels?session_id=" + session)
	if query != "" {
		u += "&" + query
	}
	conn, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial %s: %v (status %d)", u, err, status)
	}
	e.t.Cleanup(func() { conn.Close() })
	return &wsClient{t: e.t, conn: conn, session: session}
}

// frame is a Sage-cell frame as a client sees it.
type frame struct {
	Seq          uint64                     `json:"seq"`
	Channel      string                     `json:"channel"`
	Header       jupytermsg.Header          `json:"header"`
	ParentHeader jupytermsg.Header          `json:"parent_header"`
	Content      map[string]json.RawMessage `json:"content"`
	Metadata     map[string]json.RawMessage `json:"metadata"`
	Error        string                     `json:"error"`
	Message      string                     `json:"message"`
}

func (f frame) str(key string) string {
	var s string
	_ = json.Unmarshal(f.Content[key], &s)
	return s
}

// send sends a message the way Sage-cell clients do: only msg_type in the
// header, the rest left for the gateway to fill.
func (c *wsClient) send(channel, msgType string, content any) string {
	c.t.Helper()
	id := uuid.NewString()
	data, _ := json.Marshal(map[string]any{
		"channel": channel, "header": map[string]string{"msg_type": msgType, "msg_id": id, "session": c.session},
		"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": content,
	})
	if err := c.conn.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatal(err)
	}
	return id
}

func (c *wsClient) execute(code string) string {
	return c.send("shell", "execute_request", map[string]any{"code": code, "silent": false, "user_expressions": map[string]any{}, "allow_stdin": false})
}

func (c *wsClient) read() (frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("frame %s: %v", data, err)
	}
	return f, nil
}

// until reads frames until match returns true, and returns them all.
func (c *wsClient) until(match func(frame) bool) []frame {
	c.t.Helper()
	var got []frame
	for {
		f, err := c.read()
		if err != nil {
			for _, g := range got {
				c.t.Logf("got %s %s %v", g.Channel, g.Header.MsgType, g.Content)
			}
			c.t.Fatalf("read after %d frames: %v", len(got), err)
		}
		got = append(got, f)
		if match(f) {
			return got
		}
	}
}

// idleAfter matches the idle status of request msgID.
func idleAfter(msgID string) func(frame) bool {
	return func(f frame) bool {
		return f.Header.MsgType == "status" && f.ParentHeader.MsgID == msgID && f.str("execution_state") == "idle"
	}
}

func streamText(frames []frame) string {
	var out string
	for _, f := range frames {
		if f.Header.MsgType == "stream" {
			out += f.str("text")
		}
	}
	return out
}

func find(frames []frame, msgType string) (frame, bool) {
	for _, f := range frames {
		if f.Header.MsgType == msgType {
			return f, true
		}
	}
	return frame{}, false
}

type kernelAnswer struct {
	ID      string `json:"id"`
	WSURL   string `json:"ws_url"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

func (e *testEnv) newKernel(form url.Values) kernelAnswer {
	e.t.Helper()
	var k kernelAnswer
	resp := e.postForm("/kernel", form, &k)
	if resp.StatusCode != http.StatusOK || k.ID == "" {
		e.t.Fatalf("POST /kernel: %d %+v", resp.StatusCode, k)
	}
	if resp.Header.Get("Jupyter-Kernel-ID") != k.ID {
		e.t.Errorf("Jupyter-Kernel-ID header %q, id %q", resp.Header.Get("Jupyter-Kernel-ID"), k.ID)
	}
	return k
}

// waitEnded waits until the gateway forgot session id.
func (e *testEnv) waitEnded(id string) {
	e.t.Helper()
	for i := 0; e.gw.sessions.get(id) != nil; i++ {
		if i > 600 {
			e.t.Fatalf("session %s never ended", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func (e *testEnv) waitWarm() {
	e.t.Helper()
	for i := 0; !e.pool.Warm(); i++ {
		if i > 1200 {
			e.t.Fatal("pool never warmed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// endReason waits for session id to end and returns why.
func (e *testEnv) endReason(id string) string {
	e.t.Helper()
	e.waitEnded(id)
	t, ok := e.gw.sessions.tombstone(id)
	if !ok {
		e.t.Fatalf("no tombstone for ended session %s", id)
	}
	return t.reason
}

type testStorage struct {
	dir      string
	embedded *storage.Embedded
	store    *storage.Store
	queue    *storage.Queue
}

// startTestStorage runs the embedded database through the real driver.
func startTestStorage(t *testing.T, dir string) *testStorage {
	t.Helper()
	return startTestStorageWith(t, dir, storage.FileLimits{})
}

func startTestStorageWith(t *testing.T, dir string, limits storage.FileLimits) *testStorage {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the embedded database and real kernels: slow; make test runs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	emb, err := storage.StartEmbedded(ctx, storage.EmbeddedConfig{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.Open(ctx, storage.Config{URI: emb.URI(), Logger: log, ServerSelectionTimeout: time.Second, ConnectRetry: 30 * time.Second, Files: limits, Embedded: emb})
	if err != nil {
		t.Fatal(err)
	}
	q := storage.NewQueue(context.Background(), store.Permalinks(), storage.QueueConfig{Logger: log, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ts := &testStorage{dir: dir, embedded: emb, store: store, queue: q}
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func (ts *testStorage) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ts.queue != nil {
		_ = ts.queue.Close(ctx)
	}
	_ = ts.store.Close(ctx)
	_ = ts.embedded.Close()
}

func (ts *testStorage) gateway() Storage {
	return Storage{Permalinks: ts.queue, Results: ts.store.Results(), Files: ts.store.Files(), Ping: ts.store.Ping, UploadTimeout: 3 * time.Second}
}

func newStorageEnv(t *testing.T, tweaks ...func(*Config)) (*testEnv, *testStorage) {
	ts := startTestStorage(t, filepath.Join(t.TempDir(), "db"))
	env := newTestEnv(t, 1, 4, func(c *Config) {
		c.Storage = ts.gateway()
		for _, tweak := range tweaks {
			tweak(c)
		}
	})
	return env, ts
}

// fetch GETs a URL and returns the status, body and headers.
func fetch(t *testing.T, u string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body, resp.Header
}

// metricValue reads one series from /metrics, e.g.
// `cellgate_clients{transport="polling"}`.
func (e *testEnv) metricValue(series string) (float64, bool) {
	e.t.Helper()
	_, body, _ := fetch(e.t.(*testing.T), e.url("/metrics"))
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			f, err := strconv.ParseFloat(value, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 1200 {
			t.Fatalf("%s: never happened", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// nodeFor is the node binary, once the npm package module (a path below
// dir/node_modules) is installed there by `make deps`.
func nodeFor(t *testing.T, dir, module string) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", module, "package.json")); err != nil {
		t.Fatalf("%s/node_modules is missing: run `make deps` (scripts/npm-deps.sh)", dir)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: install Node.js >= 20 and run `make deps`")
	}
	return node
}
