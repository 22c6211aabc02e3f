package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellgate/cellgate/storage"
	"github.com/rs/zerolog"
)

// POST /permalink and GET /permalink answer as the Sage Cell Server's
// permalink server does; GET /permalink/ID is cellgate's own object.
func TestPermalinkRoutes(t *testing.T) {
	env, _ := newStorageEnv(t)
	var created map[string]any
	interacts := `[{"state": {"x": 7}, "bookmarks": []}]`
	resp := env.postForm("/permalink", url.Values{"code": {"print('hi')"}, "language": {"python3"}, "interacts": {interacts}, "n": {"2"}}, &created)
	query, _ := created["query"].(string)
	if resp.StatusCode != http.StatusOK || query == "" || created["n"] != float64(2) {
		t.Fatalf("POST /permalink: %d %+v", resp.StatusCode, created)
	}
	// The code and the interacts in the Sage cell's compressed form.
	zip, _ := created["zip"].(string)
	if code, err := storage.ZipDecode(zip, 1<<20); err != nil || code != "print('hi')" {
		t.Errorf("zip %q decodes to %q (%v)", zip, code, err)
	}
	zipped, _ := created["interacts"].(string)
	if got, err := storage.ZipDecode(zipped, 1<<20); err != nil || got != interacts {
		t.Errorf("interacts %q decodes to %q (%v)", zipped, got, err)
	}
	// n only when sent; it must be a number.
	var again map[string]any
	env.do(http.MethodPost, "/permalink", "application/json", `{"code":"print('hi')","language":"python3","interacts":`+strconv.Quote(interacts)+`}`, &again)
	if _, sent := again["n"]; again["query"] != query || sent {
		t.Errorf("the same cell again, without n: %+v (first %q)", again, query)
	}
	var e apiError
	if r := env.postForm("/permalink", url.Values{"code": {"1"}, "n": {"two"}}, &e); r.StatusCode != http.StatusBadRequest {
		t.Errorf("n=two: %d %+v", r.StatusCode, e)
	}
	// GET /permalink?q=: the Sage cell's [code, language, interacts].
	var cell []string
	if r := env.do(http.MethodGet, "/permalink?q="+query, "", "", &cell); r.StatusCode != http.StatusOK || len(cell) != 3 || cell[0] != "print('hi')" || cell[1] != "python3" || cell[2] != interacts {
		t.Errorf("GET /permalink?q=: %d %q", r.StatusCode, cell)
	}
	// With a JSONP callback: the array's JSON text, passed to it.
	status, body, h := fetch(t, env.url("/permalink?q="+query+"&callback=show"))
	want, _ := json.Marshal(cell)
	quoted, _ := json.Marshal(string(want))
	if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "application/javascript") || string(body) != "/**/show("+string(quoted)+");" {
		t.Errorf("JSONP: %d %s %s", status, h.Get("Content-Type"), body)
	}
	if status, _, _ := fetch(t, env.url("/permalink?q="+query+"&callback=alert(document.cookie)")); status != http.StatusBadRequest {
		t.Errorf("a callback that is not a name: %d", status)
	}
	// GET /permalink/ID: cellgate's object.
	var obj map[string]string
	if r := env.do(http.MethodGet, "/permalink/"+query, "", "", &obj); r.StatusCode != http.StatusOK || obj["code"] != "print('hi')" || obj["language"] != "python3" || obj["interacts"] != interacts {
		t.Errorf("GET /permalink/ID: %d %v", r.StatusCode, obj)
	}
	if r := env.do(http.MethodGet, "/permalink?q=doesnotexist", "", "", &e); r.StatusCode != http.StatusNotFound || e.Message == "" {
		t.Errorf("unknown permalink: %d %+v", r.StatusCode, e)
	}
	// frame=on: the page that posts the answer to its parent.
	status, body, h = fetchPost(t, env.url("/permalink"), url.Values{"code": {"print('hi')"}, "language": {"python3"}, "interacts": {interacts}, "frame": {"on"}})
	if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(string(body), `parent.postMessage("{\"interacts\":`) || !strings.Contains(string(body), query) {
		t.Errorf("frame=on: %d %s %s", status, h.Get("Content-Type"), body)
	}
}

// A Sage-cell permalink that names no language is Sage's when a SageMath
// kernel is installed, as the Sage cell stores it.
func TestPermalinkDefaultLanguage(t *testing.T) {
	ts := startTestStorage(t, filepath.Join(t.TempDir(), "db"))
	env := newTestEnv(t, 0, 2, func(c *Config) { c.Storage = ts.gateway(); c.SageCellDefaultKernel = "" })
	want := "python3"
	if _, ok := env.pool.Specs()["sagemath"]; ok {
		want = "sagemath"
	}
	var created struct{ Query string }
	env.postForm("/permalink", url.Values{"code": {"factor(12)"}}, &created)
	var cell []string
	if r := env.do(http.MethodGet, "/permalink?q="+created.Query, "", "", &cell); r.StatusCode != http.StatusOK || len(cell) != 3 || cell[1] != want || cell[2] != "[]" {
		t.Errorf("GET /permalink?q=: %d %q, want language %s", r.StatusCode, cell, want)
	}
}

// fetchPost POSTs a form and returns the status, body and headers.
func fetchPost(t *testing.T, u string, form url.Values) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body, resp.Header
}

// TestDatabaseDownComputationsContinue stops the database mid-run: cells
// still compute and get permalink ids, which are readable once it is back.
func TestDatabaseDownComputationsContinue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	ts := startTestStorage(t, dir)
	env := newTestEnv(t, 1, 4, func(c *Config) { c.Storage = ts.gateway() })
	// Stop the database under the running gateway; the queue keeps going.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ts.embedded.Close()

	var res serviceResult
	env.postForm("/service", url.Values{"code": {"print('db down')"}}, &res)
	if !res.Success || res.Stdout != "db down\n" {
		t.Fatalf("computation with the database down: %+v", res)
	}
	var ready map[string]any
	if r := env.do(http.MethodGet, "/readyz", "", "", &ready); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz with the database down: %d %v", r.StatusCode, ready)
	}
	var created struct{ Query string }
	env.postForm("/permalink", url.Values{"code": {"x = 1"}}, &created)
	if created.Query == "" {
		t.Fatal("no permalink id while the database is down")
	}
	var cell map[string]string
	if r := env.do(http.MethodGet, "/permalink/"+created.Query, "", "", &cell); r.StatusCode != http.StatusOK || cell["code"] != "x = 1" {
		t.Errorf("pending permalink not readable: %d %v", r.StatusCode, cell)
	}
	emb, err := storage.StartEmbedded(ctx, storage.EmbeddedConfig{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ts.embedded = emb
	deadline := time.Now().Add(30 * time.Second)
	for ts.queue.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := ts.queue.Len(); n != 0 {
		t.Fatalf("%d permalinks still queued after the database came back", n)
	}
	if _, err := ts.store.Permalinks().Get(ctx, created.Query); err != nil {
		t.Errorf("queued permalink did not land: %v", err)
	}
}

// An execution and POST /permalink of the same cell share one id.
func TestExecutionAndPostedPermalinkAgree(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	id := c.execute("print('same cell')")
	reply, _ := replyTo(replyAndIdle(c, id), id)
	var meta struct{ Cellgate struct{ Permalink string } }
	raw, _ := json.Marshal(reply.Metadata)
	_ = json.Unmarshal(raw, &meta)
	for _, form := range []url.Values{
		{"code": {"print('same cell')"}, "language": {"python3"}},
		{"code": {"print('same cell')"}, "language": {"python3"}, "interacts": {"[]"}},
	} {
		var created struct{ Query string }
		env.postForm("/permalink", form, &created)
		if created.Query == "" || created.Query != meta.Cellgate.Permalink {
			t.Errorf("POST /permalink %v gave %q, the execution %q", form, created.Query, meta.Cellgate.Permalink)
		}
	}
}

func TestServiceReturnsItsPermalink(t *testing.T) {
	env, _ := newStorageEnv(t)
	var res serviceResult
	env.postForm("/service", url.Values{"code": {"print('via service')"}}, &res)
	if !res.Success || res.Permalink == "" {
		t.Fatalf("result %+v", res)
	}
	// With its stored result, once written: an object beside the strings.
	var cell map[string]any
	if r := env.do(http.MethodGet, "/permalink/"+res.Permalink, "", "", &cell); r.StatusCode != http.StatusOK || cell["code"] != "print('via service')" {
		t.Errorf("GET /permalink/%s: %d %v", res.Permalink, r.StatusCode, cell)
	}
}

// slowPermalinks takes delay to record each permalink, as a journal whose
// fsync is slow does.
type slowPermalinks struct {
	delay time.Duration
	n     atomic.Int64
}

func (p *slowPermalinks) Enqueue(storage.Cell) (string, error) {
	time.Sleep(p.delay)
	return "slow" + strconv.FormatInt(p.n.Add(1), 10), nil
}

func (p *slowPermalinks) Get(context.Context, string) (storage.Permalink, error) {
	return storage.Permalink{}, storage.ErrNotFound
}

// A permalink slow to record holds its reply back, not the kernel's other
// output: the next execution's output comes meanwhile, the replies keep
// their order, and each carries its permalink.
func TestSlowPermalinkNeverStallsTheKernel(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) {
		c.Storage.Permalinks = &slowPermalinks{delay: time.Second}
		c.Storage.ReplyHold = 20 * time.Second
	})
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	first := c.execute("1")
	second := c.execute("print('meanwhile')")
	frames := c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == second })
	reply, other := -1, -1
	for i, f := range frames {
		switch {
		case f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == first:
			reply = i
		case f.ParentHeader.MsgID == second && f.str("text") == "meanwhile\n":
			other = i
		}
	}
	if reply < 0 || other < 0 || other > reply {
		t.Errorf("first reply at %d, next execution's output at %d of %d: the permalink held the kernel's output up", reply, other, len(frames))
	}
	for _, i := range []int{reply, len(frames) - 1} {
		if i < 0 {
			continue
		}
		var meta struct {
			Permalink string `json:"permalink"`
		}
		if err := json.Unmarshal(frames[i].Metadata["cellgate"], &meta); err != nil || meta.Permalink == "" {
			t.Errorf("reply to %s carries no permalink: %s", frames[i].ParentHeader.MsgID, frames[i].Metadata["cellgate"])
		}
	}
}

func (p *slowPermalinks) Delete(context.Context, string) error { return nil }

func (p *slowPermalinks) Peek(context.Context, string) (storage.Permalink, error) {
	return storage.Permalink{}, storage.ErrNotFound
}
