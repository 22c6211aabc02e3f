package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// With --allow-origin set, a page from another origin can change nothing:
// every state-changing route answers 403 (JSON) and nothing happens, while
// requests without an Origin (scripts, apps) and from allowed origins work.
func TestDisallowedOriginRefusedOnEveryStateChangingRoute(t *testing.T) {
	const allowed, evil = "https://allowed.example", "https://evil.example"
	env := newTestEnv(t, 1, 6, func(c *Config) { c.AllowOrigins = []string{allowed} })
	// Without an Origin: a script, not a page.
	k := env.newKernel(url.Values{"timeout": {"60"}})
	var jk struct{ ID string }
	if r := env.do(http.MethodPost, "/api/kernels", "application/json", `{"name":"python3"}`, &jk); r.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/kernels without an Origin: %d", r.StatusCode)
	}
	const form, js = "application/x-www-form-urlencoded", "application/json"
	execute := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"x"},"parent_header":{},"metadata":{},"content":{"code":"1"}}`
	routes := []struct{ method, path, contentType, body string }{
		{http.MethodPost, "/kernel", form, "timeout=60"},
		{http.MethodDelete, "/kernel/" + k.ID, "", ""},
		{http.MethodPost, "/kernel/" + k.ID, form, "method=DELETE"},
		{http.MethodPost, "/kernel/" + k.ID + "/interrupt", "", ""},
		{http.MethodGet, "/kernel/" + k.ID + "/poll?client=c", "", ""},
		{http.MethodPost, "/kernel/" + k.ID + "/poll?client=c", js, execute},
		{http.MethodPost, "/service", form, "code=print(1)"},
		{http.MethodPost, "/permalink", form, "code=print(1)"},
		{http.MethodPost, "/api/kernels", js, `{"name":"python3"}`},
		{http.MethodDelete, "/api/kernels/" + jk.ID, "", ""},
		{http.MethodPost, "/api/kernels/" + jk.ID + "/interrupt", "", ""},
		{http.MethodPost, "/api/kernels/" + jk.ID + "/restart", "", ""},
		{http.MethodPost, "/api/sessions", js, `{"path":"a.ipynb","type":"notebook","name":"a.ipynb","kernel":{"name":"python3"}}`},
		{http.MethodPatch, "/api/sessions/some-id", js, `{"path":"b.ipynb"}`},
		{http.MethodDelete, "/api/sessions/some-id", "", ""},
	}
	for _, rt := range routes {
		h := http.Header{"Origin": {evil}}
		if rt.contentType != "" {
			h.Set("Content-Type", rt.contentType)
		}
		var e apiError
		r := env.doWith(rt.method, rt.path, h, rt.body, &e)
		if r.StatusCode != http.StatusForbidden || e.Error != "Forbidden" || !strings.Contains(e.Message, evil) {
			t.Errorf("%s %s from %s: %d %+v, want 403", rt.method, rt.path, evil, r.StatusCode, e)
		}
	}
	for _, path := range []string{"/kernel/" + k.ID + "/channels", "/api/kernels/" + jk.ID + "/channels"} {
		_, resp, err := websocket.DefaultDialer.Dial(env.wsURL(path), http.Header{"Origin": {evil}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("websocket %s from %s: %v %v, want 403", path, evil, resp, err)
		}
	}
	// Nothing happened: both kernels live, no session started.
	if env.gw.sessions.get(k.ID) == nil || env.gw.sessions.get(jk.ID) == nil || env.gw.sessions.count() != 2 {
		t.Errorf("after refused requests: %d sessions, want the 2 started", env.gw.sessions.count())
	}
	// Reading is not refused.
	for _, path := range []string{"/kernelspecs", "/healthz", "/api/kernels/" + jk.ID} {
		if r := env.doWith(http.MethodGet, path, http.Header{"Origin": {evil}}, "", nil); r.StatusCode != http.StatusOK {
			t.Errorf("GET %s from %s: %d", path, evil, r.StatusCode)
		}
	}

	// An allowed origin, and a page served by this host itself, work.
	var k2 kernelAnswer
	if r := env.doWith(http.MethodPost, "/kernel", http.Header{"Origin": {allowed}, "Content-Type": {form}}, "timeout=60", &k2); r.StatusCode != http.StatusOK {
		t.Errorf("POST /kernel from %s: %d %+v", allowed, r.StatusCode, k2)
	}
	self := http.Header{"Origin": {env.http.URL}}
	if r := env.doWith(http.MethodPost, "/kernel/"+k.ID+"/interrupt", self, "", nil); r.StatusCode != http.StatusNoContent {
		t.Errorf("interrupt from the server's own origin: %d", r.StatusCode)
	}
	if r := env.doWith(http.MethodGet, "/kernel/"+k.ID+"/poll?client=c&wait=0", self, "", nil); r.StatusCode != http.StatusOK {
		t.Errorf("poll from the server's own origin: %d", r.StatusCode)
	}
	// And so does a script: the delete refused above goes through.
	if r := env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil); r.StatusCode != http.StatusNoContent {
		t.Errorf("DELETE /kernel/{id} without an Origin: %d", r.StatusCode)
	}
}

// With the default --allow-origin (*), any origin may change state.
func TestAnyOriginAllowedByDefault(t *testing.T) {
	env := newTestEnv(t, 0, 1, nil)
	h := http.Header{"Origin": {"https://anywhere.example"}, "Content-Type": {"application/x-www-form-urlencoded"}}
	// No database here: 501 is the permalink route answering, not refusing.
	if r := env.doWith(http.MethodPost, "/permalink", h, "code=1", nil); r.StatusCode != http.StatusNotImplemented {
		t.Errorf("POST /permalink from any origin with --allow-origin=*: %d", r.StatusCode)
	}
}

func TestChangesState(t *testing.T) {
	for _, tc := range []struct {
		method, route string
		want          bool
	}{
		{http.MethodPost, "/kernel", true},
		{http.MethodDelete, "/kernel/:id", true},
		{http.MethodPatch, "/api/sessions/:id", true},
		{http.MethodPut, "/anything", true},
		{http.MethodGet, "/kernel/:id/poll", true},
		{http.MethodGet, "/kernel/:id/channels", true},
		{http.MethodGet, "/api/kernels/:id/channels", true},
		{http.MethodGet, "/permalink", false},
		{http.MethodHead, "/kernelspecs", false},
		{http.MethodOptions, "/kernel", false},
	} {
		if got := changesState(tc.method, tc.route); got != tc.want {
			t.Errorf("changesState(%s, %s) = %v", tc.method, tc.route, got)
		}
	}
}
