package static

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
)

func requireBuilt(t *testing.T) {
	t.Helper()
	if !New().Built() {
		t.Fatal("static/dist is not built: run scripts/web-build.sh (make build)")
	}
}

func TestWrap(t *testing.T) {
	requireBuilt(t)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Next", "1")
		w.WriteHeader(http.StatusTeapot)
	})
	srv := httptest.NewServer(Wrap(next))
	defer srv.Close()

	cases := []struct {
		method, path string
		code         int
		ctype        string
		contains     string
		next         bool
		cors         bool
	}{
		{"GET", "/", 200, "text/html", "static/embed.js", false, false},
		{"GET", "/?q=abc", 200, "text/html", "<title>cellgate</title>", false, false},
		{"GET", "/static/embed.js", 200, "text/javascript", "makeCell", false, true},
		{"GET", "/static/embed.css", 200, "text/css", ".cellgate", false, true},
		{"GET", "/embedded_sagecell.js", 200, "text/javascript", "makeSagecell", false, true},
		{"GET", "/static/embedded_sagecell.js", 200, "text/javascript", "makeSagecell", false, true},
		{"GET", "/static/demo.js", 200, "text/javascript", "demoCell", false, true},
		// What pages written for the Sage cell link to.
		{"GET", "/static/jquery.min.js", 200, "text/javascript", "jQuery v3.7.1", false, true},
		{"GET", "/static/sagecell_embed.css", 200, "text/css", ".cellgate", false, true},
		{"GET", "/static/sagecell.css", 200, "text/css", ".cellgate", false, true},
		{"GET", "/static/spinner.gif", 200, "image/gif", "GIF89a", false, true},
		{"GET", "/help.html", 200, "text/html", "makeSagecell", false, false},
		{"POST", "/tos.html", 418, "", "", true, false},
		{"HEAD", "/static/embed.js", 200, "text/javascript", "", false, true},
		{"GET", "/static/nope.js", 404, "", "", false, true},
		{"GET", "/static/../static.go", 404, "", "", false, true},
		{"POST", "/static/embed.js", 405, "", "", false, true},
		{"GET", "/kernelspecs", 418, "", "", true, false},
		{"POST", "/", 418, "", "", true, false},
		{"POST", "/kernel", 418, "", "", true, false},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
			continue
		}
		if got := resp.Header.Get("X-Next") == "1"; got != c.next {
			t.Errorf("%s %s: delegated=%v, want %v", c.method, c.path, got, c.next)
		}
		if c.ctype != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) {
			t.Errorf("%s %s: Content-Type %q, want %s", c.method, c.path, resp.Header.Get("Content-Type"), c.ctype)
		}
		if c.contains != "" && !strings.Contains(string(body), c.contains) {
			t.Errorf("%s %s: body lacks %q", c.method, c.path, c.contains)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin") == "*"; got != c.cors {
			t.Errorf("%s %s: CORS header %v, want %v", c.method, c.path, got, c.cors)
		}
	}
}

func TestGzipAndETag(t *testing.T) {
	requireBuilt(t)
	c := New()
	plain := httptest.NewRecorder()
	c.ServeHTTP(plain, httptest.NewRequest("GET", "/static/embed.js", nil))
	if plain.Code != 200 || plain.Header().Get("Content-Encoding") != "" {
		t.Fatalf("plain: %d %q", plain.Code, plain.Header().Get("Content-Encoding"))
	}
	req := httptest.NewRequest("GET", "/static/embed.js", nil)
	req.Header.Set("Accept-Encoding", "br, gzip;q=0.8")
	gz := httptest.NewRecorder()
	c.ServeHTTP(gz, req)
	if gz.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("no gzip for Accept-Encoding %q", req.Header.Get("Accept-Encoding"))
	}
	if gz.Body.Len() >= plain.Body.Len() {
		t.Errorf("gzipped %d bytes, plain %d", gz.Body.Len(), plain.Body.Len())
	}
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	unzipped, _ := io.ReadAll(zr)
	if string(unzipped) != plain.Body.String() {
		t.Error("gzipped body differs from the plain one")
	}

	refused := httptest.NewRequest("GET", "/static/embed.js", nil)
	refused.Header.Set("Accept-Encoding", "gzip;q=0")
	rr := httptest.NewRecorder()
	c.ServeHTTP(rr, refused)
	if rr.Header().Get("Content-Encoding") != "" {
		t.Error("gzip sent although refused with q=0")
	}

	etag := plain.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	again := httptest.NewRequest("GET", "/static/embed.js", nil)
	again.Header.Set("If-None-Match", etag)
	nm := httptest.NewRecorder()
	c.ServeHTTP(nm, again)
	if nm.Code != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", nm.Code)
	}
}

func TestRegister(t *testing.T) {
	requireBuilt(t)
	e := echo.New()
	Register(e)
	for _, p := range []string{"/", "/static/embed.js", "/embedded_sagecell.js", "/static/embed.css"} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != 200 {
			t.Errorf("GET %s: %d", p, rec.Code)
		}
	}
}

func TestFontsAreImmutable(t *testing.T) {
	requireBuilt(t)
	c := New()
	n := 0
	for p, a := range c.files {
		if strings.HasPrefix(p, "/static/fonts/") {
			n++
			if !strings.Contains(a.cache, "immutable") || a.ctype != "font/woff2" {
				t.Errorf("%s: cache %q type %q", p, a.cache, a.ctype)
			}
		}
	}
	if n == 0 {
		t.Error("no KaTeX fonts in the bundle")
	}
}

// TestJQueryOnlyInSagecellScript checks that jQuery is bundled into
// /embedded_sagecell.js, which pages written for the Sage cell use, and not
// into embed.js.
func TestJQueryOnlyInSagecellScript(t *testing.T) {
	requireBuilt(t)
	c := New()
	const banner = "jQuery JavaScript Library v3.7.1"
	if a := c.files["/static/embed.js"]; strings.Contains(string(a.data), banner) {
		t.Error("embed.js bundles jQuery")
	}
	for _, p := range []string{"/embedded_sagecell.js", "/static/embedded_sagecell.js"} {
		if a := c.files[p]; a == nil || !strings.Contains(string(a.data), banner) {
			t.Errorf("%s does not bundle jQuery", p)
		}
	}
	// The Sage cell's stylesheets are embed.css itself: its fonts resolve
	// against the same directory.
	if c.files["/static/sagecell_embed.css"] != c.files["/static/embed.css"] || c.files["/static/sagecell.css"] != c.files["/static/embed.css"] {
		t.Error("sagecell_embed.css and sagecell.css are not embed.css")
	}
}

// Static files are public: a request with an Origin (credentialed, as the
// Sage cell's front end makes them) gets that origin back with
// Allow-Credentials, never "*"; one without gets "*".
func TestStaticCORSWithCredentials(t *testing.T) {
	requireBuilt(t)
	c := New()
	req := httptest.NewRequest("GET", "/static/embed.css", nil)
	req.Header.Set("Origin", "https://book.example")
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	h := rec.Header()
	if h.Get("Access-Control-Allow-Origin") != "https://book.example" || h.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(strings.Join(h.Values("Vary"), ","), "Origin") {
		t.Errorf("with an Origin: %v", h)
	}
	rec = httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "/static/embed.css", nil))
	if h := rec.Header(); h.Get("Access-Control-Allow-Origin") != "*" || h.Get("Access-Control-Allow-Credentials") != "" {
		t.Errorf("without an Origin: %v", h)
	}
}
