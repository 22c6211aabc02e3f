package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
)

// POST /tos.html answers as the Sage cell does when no terms need
// accepting: 204, or an empty string to a JSONP callback.
func TestTermsOfService(t *testing.T) {
	env := newTestEnv(t, 0, 2, nil)
	cases := []struct {
		method, path, body string
		code               int
		ctype, want        string
	}{
		{http.MethodPost, "/tos.html", "", http.StatusNoContent, "", ""},
		{http.MethodPost, "/tos.html?callback=sagecell.tosReply", "", http.StatusOK, "application/javascript", `/**/sagecell.tosReply("");`},
		{http.MethodPost, "/tos.html", "callback=jQuery3710_1", http.StatusOK, "application/javascript", `/**/jQuery3710_1("");`},
		{http.MethodPost, "/tos.html?callback=alert(1)", "", http.StatusBadRequest, "application/json", "callback"},
		{http.MethodPost, "/tos.html?callback=" + strings.Repeat("a", maxCallbackBytes+1), "", http.StatusBadRequest, "application/json", "callback"},
		{http.MethodGet, "/tos.html", "", http.StatusNotFound, "application/json", "No Terms of Service Required"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, env.url(c.path), strings.NewReader(c.body))
		if c.body != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) || !strings.Contains(string(body), c.want) {
			t.Errorf("%s %s %q: %d %q %s", c.method, c.path, c.body, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
}

// FuzzFramePage checks that no value, however hostile, gets out of the
// string the frame page posts, and that the parent gets it back whole.
func FuzzFramePage(f *testing.F) {
	for _, s := range []string{"", "</script><script>alert(1)</script>", "\u2028\u2029", `"\'`, "<!--", "\x00\xff", "\xff\xfe"} {
		f.Add(s)
	}
	e := echo.New()
	f.Fuzz(func(t *testing.T, s string) {
		rec := httptest.NewRecorder()
		c := e.NewContext(httptest.NewRequest(http.MethodPost, "/kernel?frame=on", nil), rec)
		if err := framePage(c, http.StatusOK, map[string]string{"v": s}); err != nil {
			t.Fatal(err)
		}
		page := rec.Body.String()
		inner, ok := strings.CutPrefix(page, "<script>parent.postMessage(")
		if !ok {
			t.Fatalf("page %q", page)
		}
		literal, ok := strings.CutSuffix(inner, `,"*");</script>`)
		if !ok || strings.ContainsAny(literal, "<>") {
			t.Fatalf("page %q", page)
		}
		// The literal is a JSON string (a valid JavaScript one) holding
		// the JSON of the data.
		var text string
		if err := json.Unmarshal([]byte(literal), &text); err != nil {
			t.Fatalf("literal %q: %v", literal, err)
		}
		var back map[string]string
		if err := json.Unmarshal([]byte(text), &back); err != nil {
			t.Fatalf("posted %q: %v", text, err)
		}
		if want := string([]rune(s)); back["v"] != want { // each invalid byte becomes U+FFFD
			t.Fatalf("posted %q, want %q", back["v"], want)
		}
	})
}

// FuzzJSONPCallback checks that only plain JavaScript names are taken as a
// JSONP callback.
func FuzzJSONPCallback(f *testing.F) {
	for _, s := range []string{"cb", "a.b.c", "jQuery3710_1", "$", "alert(1)", "a;b", "a b", "", ".a", "a..b", "\u00e9"} {
		f.Add(s)
	}
	e := echo.New()
	f.Fuzz(func(t *testing.T, s string) {
		req := httptest.NewRequest(http.MethodPost, "/tos.html", nil)
		q := req.URL.Query()
		q.Set("callback", s)
		req.URL.RawQuery = q.Encode()
		c := e.NewContext(req, httptest.NewRecorder())
		cb, err := jsonpCallback(c)
		if err != nil {
			return
		}
		if cb != s || len(cb) > maxCallbackBytes {
			t.Fatalf("callback %q taken as %q", s, cb)
		}
		for _, r := range cb {
			if !(r == '_' || r == '$' || r == '.' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
				t.Fatalf("callback %q taken, with %q", s, r)
			}
		}
	})
}
