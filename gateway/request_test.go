package gateway

import (
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

func FuzzFormOrJSON(f *testing.F) {
	f.Add("application/json", `{"code":"1+1","timeout":30,"accepted_tos":true,"interacts":[1,{"a":null}]}`)
	f.Add("application/json", `[1,2]`)
	f.Add("application/json; charset=utf-8", `{"code":`)
	f.Add("application/x-www-form-urlencoded", "code=1%2B1&timeout=0&language=python")
	f.Add("application/x-www-form-urlencoded", "code=%zz&&=")
	f.Add("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"code\"\r\n\r\n1\r\n--x--\r\n")
	e := echo.New()
	f.Fuzz(func(t *testing.T, contentType, body string) {
		req := httptest.NewRequest(http.MethodPost, "/kernel?timeout=5", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		c := e.NewContext(req, httptest.NewRecorder())
		fields, err := formOrJSON(c)
		if err != nil {
			return
		}
		for _, name := range []string{"code", "timeout", "language", "kernel_name", "interacts", "client_id", "n", "method"} {
			_ = param(c, fields, name)
		}
	})
}

func FuzzNumbers(f *testing.F) {
	for _, seed := range []string{"0", "1.5", "-1", "NaN", "Inf", "-0", "1e9", "1e10", "18446744073709551615", "18446744073709551616", " 1", "0x10", ""} {
		f.Add(seed, uint64(10))
	}
	f.Fuzz(func(t *testing.T, v string, last uint64) {
		if d, err := parseSeconds(v); err == nil && (d < 0 || d > time.Duration(1e9*float64(time.Second)) || math.IsNaN(float64(d))) {
			t.Fatalf("parseSeconds(%q) = %v", v, d)
		}
		if n, err := parseSince(v, last); err == nil && n > last {
			t.Fatalf("parseSince(%q, %d) = %d, beyond the last", v, last, n)
		}
		const limit = 25 * time.Second
		if d, err := parseWait(v, limit); err == nil && (d < 0 || d > limit) {
			t.Fatalf("parseWait(%q) = %v", v, d)
		}
	})
}

// A public URL without its trailing slash still gives well-formed links.
func TestPublicURLWithoutTrailingSlash(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.PublicURL = "https://cells.example.org/sub" })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	if k.WSURL != "wss://cells.example.org/sub/" {
		t.Errorf("ws_url %q", k.WSURL)
	}
	if got := env.gw.baseURL(nil).String() + "files/x/y"; got != "https://cells.example.org/sub/files/x/y" {
		t.Errorf("file URL %q", got)
	}
}
