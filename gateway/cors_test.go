package gateway

import (
	"net/http"
	"strings"
	"testing"
)

// Credentialed requests (the Sage cell's front end sends them) are
// answered with the request's origin, when allowed, and
// Access-Control-Allow-Credentials: never with "*", which browsers refuse
// with credentials.
func TestCORSWithCredentials(t *testing.T) {
	cases := []struct {
		allow  []string
		origin string
		want   string // Access-Control-Allow-Origin; "" for none
	}{
		{[]string{"*"}, "https://book.example", "https://book.example"},
		{[]string{"https://book.example"}, "https://book.example", "https://book.example"},
		{[]string{"https://book.example"}, "https://evil.example", ""},
	}
	for _, c := range cases {
		env := newTestEnv(t, 0, 2, func(cfg *Config) { cfg.AllowOrigins = c.allow })
		requests := []struct {
			method, path string
			header       http.Header
		}{
			// A preflight, and simple requests that read.
			{http.MethodOptions, "/kernel", http.Header{"Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type"}}},
			{http.MethodGet, "/kernelspecs", nil},
			{http.MethodGet, "/permalink?q=x", nil},
		}
		for _, r := range requests {
			h := http.Header{"Origin": {c.origin}}
			for k, v := range r.header {
				h[k] = v
			}
			resp := env.doWith(r.method, r.path, h, "", nil)
			got := resp.Header.Get("Access-Control-Allow-Origin")
			creds := resp.Header.Get("Access-Control-Allow-Credentials")
			if got != c.want {
				t.Errorf("allow %v, %s %s from %s: Allow-Origin %q, want %q", c.allow, r.method, r.path, c.origin, got, c.want)
			}
			if got != "" && creds != "true" {
				t.Errorf("allow %v, %s %s from %s: Allow-Credentials %q", c.allow, r.method, r.path, c.origin, creds)
			}
			if got == "*" {
				t.Errorf("allow %v, %s %s: \"*\" with credentials", c.allow, r.method, r.path)
			}
			if !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
				t.Errorf("allow %v, %s %s: no Vary: Origin (%v)", c.allow, r.method, r.path, resp.Header)
			}
		}
	}
}
