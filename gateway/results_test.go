package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/result"
	"github.com/cellgate/cellgate/static"
)

// permalinkOf is the permalink id an execute_reply carries.
func permalinkOf(t *testing.T, frames []frame) string {
	t.Helper()
	for _, f := range frames {
		if f.Header.MsgType == "execute_reply" {
			var meta struct {
				Cellgate struct {
					Permalink string `json:"permalink"`
				} `json:"cellgate"`
			}
			_ = json.Unmarshal(f.Metadata["cellgate"], &meta.Cellgate)
			if meta.Cellgate.Permalink != "" {
				return meta.Cellgate.Permalink
			}
		}
	}
	t.Fatal("no execute_reply with a permalink")
	return ""
}

// storedResultOf waits for permalink id's result (it is written after the
// kernel goes idle) and returns it.
func storedResultOf(t *testing.T, env *testEnv, id string, ready func(result.Result) bool) result.Result {
	t.Helper()
	var res result.Result
	waitFor(t, "the result stored with permalink "+id, func() bool {
		res = result.Result{}
		r := env.do(http.MethodGet, "/permalink/"+id+"/outputs", "", "", &res)
		return r.StatusCode == http.StatusOK && ready(res)
	})
	return res
}

// An execution's permalink opens with what it showed: its outputs in
// nbformat, in GET /permalink/ID and GET /permalink/ID/outputs; the Sage
// cell's array stays as it is; the operator can delete it.
func TestPermalinkKeepsItsResult(t *testing.T) {
	env, _ := newStorageEnv(t, func(c *Config) { c.Token = "operator-secret" })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	began := time.Now().Add(-time.Second)
	msgID := c.execute("print('hello')\nfrom IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\nopen('out.txt', 'w').write('written')\n6*7")
	frames := c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == msgID })
	id := permalinkOf(t, frames)

	res := storedResultOf(t, env, id, func(r result.Result) bool { return len(r.Outputs) > 0 && len(r.Files) > 0 })
	if f := res.Files[0]; f.Name != "out.txt" {
		t.Errorf("result's files %+v, want out.txt", res.Files)
	} else if status, body, _ := fetch(t, f.URL); status != http.StatusOK || string(body) != "written" {
		t.Errorf("GET %s: %d %q", f.URL, status, body)
	}
	got, _ := json.Marshal(res.Outputs)
	for _, want := range []string{`"text":"hello\n"`, `"text/html":"\u003cb\u003ebold\u003c/b\u003e"`, `"output_type":"execute_result"`, `"text/plain":"42"`} {
		if !strings.Contains(string(got), want) {
			t.Errorf("stored outputs %s lack %s", got, want)
		}
	}
	if res.Created.Before(began) || res.Created.After(time.Now()) || res.Truncated {
		t.Errorf("created %v (ran after %v), truncated %v", res.Created, began, res.Truncated)
	}
	var obj struct {
		Code   string          `json:"code"`
		Result json.RawMessage `json:"result"`
	}
	if r := env.do(http.MethodGet, "/permalink/"+id, "", "", &obj); r.StatusCode != http.StatusOK || !strings.Contains(string(obj.Result), "hello") {
		t.Errorf("GET /permalink/ID: %d, result %s", r.StatusCode, obj.Result)
	}
	var cell []any
	if r := env.do(http.MethodGet, "/permalink?q="+id, "", "", &cell); r.StatusCode != http.StatusOK || len(cell) != 3 {
		t.Errorf("GET /permalink?q=: %d %v: the Sage cell's array must keep its three items", r.StatusCode, cell)
	}

	// Deleting is the operator's: without the token, 401; with it, gone.
	if r := env.do(http.MethodDelete, "/permalink/"+id, "", "", nil); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("DELETE without the token: %d", r.StatusCode)
	}
	h := http.Header{"Authorization": {"token operator-secret"}}
	if r := env.doWith(http.MethodDelete, "/permalink/"+id, h, "", nil); r.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE with the token: %d", r.StatusCode)
	}
	for _, path := range []string{"/permalink/" + id, "/permalink/" + id + "/outputs"} {
		if r := env.do(http.MethodGet, path, "", "", nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s after DELETE: %d", path, r.StatusCode)
		}
	}
}

// Without a --token nobody may delete permalinks.
func TestPermalinkDeleteNeedsAToken(t *testing.T) {
	env, _ := newStorageEnv(t)
	var created map[string]any
	env.postForm("/permalink", url.Values{"code": {"1"}, "language": {"python3"}}, &created)
	id, _ := created["query"].(string)
	if r := env.do(http.MethodDelete, "/permalink/"+id, "", "", nil); r.StatusCode != http.StatusForbidden {
		t.Errorf("DELETE with no token configured: %d, want 403", r.StatusCode)
	}
	if r := env.do(http.MethodGet, "/permalink/"+id, "", "", nil); r.StatusCode != http.StatusOK {
		t.Errorf("permalink gone after a refused DELETE: %d", r.StatusCode)
	}
}

// A shared interact keeps the state the sharer left it in: POST /permalink
// with the session's kernel_id stores its last result with the slider the
// reader moved to 7 and the Output widget showing x=7.
func TestSharedInteractKeepsItsState(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	code := "from ipywidgets import interact\n@interact(x=(0, 10))\ndef f(x=3):\n    print('x is', x)\n"
	frames := c.until(idleAfter(c.execute(code)))
	slider := ""
	for _, f := range frames {
		if f.Header.MsgType == "comm_open" && strings.Contains(string(f.Content["data"]), "IntSliderModel") {
			slider = f.str("comm_id")
		}
	}
	if slider == "" {
		t.Fatal("the interact opened no slider")
	}
	// As a page speaks to Debian's ipywidgets 6.
	update := c.send("shell", "comm_msg", map[string]any{"comm_id": slider, "data": map[string]any{"method": "backbone", "sync_data": map[string]any{"value": 7}, "buffer_keys": []any{}}})
	c.until(func(f frame) bool { return f.Header.MsgType == "stream" && strings.Contains(f.str("text"), "x is 7") })
	c.until(idleAfter(update))

	var created map[string]any
	interacts := `[{"state":{"x":7},"bookmarks":[]}]`
	env.postForm("/permalink", url.Values{"code": {code}, "language": {"python3"}, "interacts": {interacts}, "kernel_id": {k.ID}}, &created)
	id, _ := created["query"].(string)
	res := storedResultOf(t, env, id, func(r result.Result) bool { return r.Widgets != nil })
	var value json.RawMessage
	var shown string
	for _, w := range res.Widgets.State {
		switch w.ModelName {
		case "IntSliderModel":
			value = w.State["value"]
		case "OutputModel":
			shown += string(w.State["outputs"])
		}
	}
	if string(value) != "7" {
		t.Errorf("shared slider at %s, want 7", value)
	}
	if !strings.Contains(shown, "x is 7") || strings.Contains(shown, "x is 3") {
		t.Errorf("shared Output widget shows %s, want x is 7 only", shown)
	}
	views := 0
	for _, o := range res.Outputs {
		if strings.Contains(string(o.Data), result.WidgetViewMIME) {
			views++
		}
	}
	if views == 0 {
		t.Errorf("outputs %+v show no widget", res.Outputs)
	}

	// Another session's kernel id, or other code, stores nothing.
	var other map[string]any
	env.postForm("/permalink", url.Values{"code": {"print(2)"}, "language": {"python3"}, "kernel_id": {k.ID}}, &other)
	otherID, _ := other["query"].(string)
	if r := env.do(http.MethodGet, "/permalink/"+otherID+"/outputs", "", "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("a share of code the session did not run last got a result: %d", r.StatusCode)
	}
}

// A shared cell's link previews well: /?q=ID carries Open Graph tags (title
// from the code, description from the result, image from its plot) and an
// oEmbed link; /oembed answers an iframe of it; the image is served.
func TestSharedLinkPreviews(t *testing.T) {
	env, _ := newStorageEnv(t)
	pages := httptest.NewServer(static.WrapWith(env.gw.Handler(), func(r *http.Request) (static.Meta, bool) {
		m, ok := env.gw.PermalinkMeta(r)
		return static.Meta(m), ok
	}))
	t.Cleanup(pages.Close)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	code := "# a comment first\nimport matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt, io, base64\nfrom IPython.display import Image, display\nbuf = io.BytesIO(); plt.plot([1, 2, 3]); plt.savefig(buf, format='png')\nprint('the answer is <42>')\ndisplay(Image(buf.getvalue()))\n"
	msgID := c.execute(code)
	id := permalinkOf(t, c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == msgID }))
	storedResultOf(t, env, id, func(r result.Result) bool { return len(r.Outputs) >= 2 })

	status, body, _ := fetch(t, pages.URL+"/?q="+id)
	page := string(body)
	for _, want := range []string{
		`<meta property="og:title" content="import matplotlib · python3">`,
		`<meta property="og:description" content="the answer is &lt;42&gt;`,
		`<meta property="og:image" content="` + pages.URL + `/permalink/` + id + `/image.png">`,
		`<link rel="alternate" type="application/json+oembed" href="` + pages.URL + `/oembed?format=json&amp;url=`,
		`<title>import matplotlib · python3 · cellgate</title>`,
	} {
		if status != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("GET /?q=: %d, page lacks %s", status, want)
		}
	}
	if strings.Contains(page, "<42>") {
		t.Error("the result's text reached the page unescaped")
	}
	if _, plain, _ := fetch(t, pages.URL+"/"); strings.Contains(string(plain), "og:title") {
		t.Error("the plain page carries a shared cell's preview")
	}

	status, png, h := fetch(t, pages.URL+"/permalink/"+id+"/image.png")
	if status != http.StatusOK || h.Get("Content-Type") != "image/png" || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Errorf("image: %d %s %d bytes", status, h.Get("Content-Type"), len(png))
	}

	var oe map[string]any
	link := pages.URL + "/?q=" + id
	status, raw, _ := fetch(t, pages.URL+"/oembed?url="+url.QueryEscape(link)+"&maxwidth=500")
	if err := json.Unmarshal(raw, &oe); err != nil || status != http.StatusOK {
		t.Fatalf("oembed: %d %s", status, raw)
	}
	if oe["type"] != "rich" || oe["version"] != "1.0" || oe["width"] != float64(500) || !strings.Contains(oe["html"].(string), `<iframe src="`+pages.URL+`/?q=`+id+`"`) || oe["thumbnail_url"] == nil {
		t.Errorf("oembed answer %v", oe)
	}
	for _, bad := range []string{"http://elsewhere.example/?q=" + id, pages.URL + "/?q=nosuchcell", pages.URL + "/help.html?q=" + id} {
		if status, _, _ := fetch(t, pages.URL+"/oembed?url="+url.QueryEscape(bad)); status != http.StatusNotFound {
			t.Errorf("oembed of %s: %d, want 404", bad, status)
		}
	}
	if status, _, _ := fetch(t, pages.URL+"/oembed?format=xml&url="+url.QueryEscape(link)); status != http.StatusNotImplemented {
		t.Errorf("oembed format=xml: %d, want 501", status)
	}
}

// What a reader typed at an input() prompt is never part of a result.
func TestResultKeepsNoStdinAnswer(t *testing.T) {
	env, _ := newStorageEnv(t)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	msgID := c.send("shell", "execute_request", map[string]any{"code": "answer = input('password? ')\nprint('got', len(answer), 'characters')", "silent": false, "user_expressions": map[string]any{}, "allow_stdin": true})
	c.until(func(f frame) bool { return f.Header.MsgType == "input_request" })
	c.send("stdin", "input_reply", map[string]any{"value": "hunter2-secret"})
	frames := c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == msgID })
	id := permalinkOf(t, frames)
	res := storedResultOf(t, env, id, func(r result.Result) bool { return len(r.Outputs) > 0 })
	body, _ := json.Marshal(res)
	if !strings.Contains(string(body), "got 14 characters") {
		t.Fatalf("result %s lacks the output (the test would prove nothing)", body)
	}
	if strings.Contains(string(body), "hunter2") {
		t.Fatalf("result %s keeps the stdin answer", body)
	}
}

// With result storage off (--store-results=false) permalinks keep only
// their code, and the result routes say so.
func TestResultsCanBeTurnedOff(t *testing.T) {
	env, _ := newStorageEnv(t, func(c *Config) { c.Storage.Results = nil })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	msgID := c.execute("print('not kept')")
	id := permalinkOf(t, c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == msgID }))
	var e apiError
	if r := env.do(http.MethodGet, "/permalink/"+id+"/outputs", "", "", &e); r.StatusCode != http.StatusNotFound || !strings.Contains(e.Message, "keeps no results") {
		t.Errorf("outputs with results off: %d %+v", r.StatusCode, e)
	}
	var obj map[string]any
	if r := env.do(http.MethodGet, "/permalink/"+id, "", "", &obj); r.StatusCode != http.StatusOK || obj["result"] != nil || obj["code"] != "print('not kept')" {
		t.Errorf("permalink with results off: %d %v", r.StatusCode, obj)
	}
}

// A result's large image is stored as a file of its own, not inline: the
// stored body stays within the budget, and clients get the image back in
// place, as nbformat has it.
func TestLargeImagesStoredAsFiles(t *testing.T) {
	env, ts := newStorageEnv(t, func(c *Config) { c.Storage.ResultBudget = 32 << 10 })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	code := "import numpy as np, io\nimport matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\nfrom IPython.display import Image, display\nbuf = io.BytesIO()\nplt.imsave(buf, np.random.default_rng(1).random((300, 300)), format='png')\ndisplay(Image(buf.getvalue()))\nprint('noise')"
	msgID := c.execute(code)
	id := permalinkOf(t, c.until(func(f frame) bool { return f.Header.MsgType == "execute_reply" && f.ParentHeader.MsgID == msgID }))
	res := storedResultOf(t, env, id, func(r result.Result) bool { return len(r.Outputs) >= 2 })
	if res.Truncated {
		t.Error("a result whose image is over the inline budget was truncated")
	}
	var png []byte
	for _, o := range res.Outputs {
		var data map[string]string
		_ = json.Unmarshal(o.Data, &data)
		if b, err := base64.StdEncoding.DecodeString(data["image/png"]); err == nil && len(b) > 0 {
			png = b
		}
	}
	if len(png) < result.LargeImageBytes || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("the image came back as %d bytes", len(png))
	}
	stored, err := ts.store.Results().Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.Body) > 32<<10 || !strings.Contains(string(stored.Body), permalink.FileRefPrefix) {
		t.Errorf("stored body of %d bytes (budget 32 KiB), refers to a file: %v", len(stored.Body), strings.Contains(string(stored.Body), permalink.FileRefPrefix))
	}
	if len(res.Files) != 0 {
		t.Errorf("the result's image is listed among the files the code wrote: %+v", res.Files)
	}
	if status, body, _ := fetch(t, env.url("/permalink/"+id+"/image.png")); status != http.StatusOK || string(body) != string(png) {
		t.Errorf("image.png: %d, %d bytes", status, len(body))
	}
}
