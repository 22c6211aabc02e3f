package cluster

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// node is an instance as the gateway will wire the package: its registry, an Authenticator in
// front of its handler, and a Forwarder, all on the registry's clock. Its handler serves the
// sessions it owns, forwards the others' to their owner, and answers an ended session 410.
type node struct {
	reg *Registry
	srv *httptest.Server
}

func startNode(t *testing.T, db testDB, id string) *node {
	t.Helper()
	n := &node{}
	var fwd *Forwarder
	var auth *Authenticator
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/kernel/")
		for attempt := 0; ; attempt++ {
			owner, err := n.reg.Owner(r.Context(), id)
			switch {
			case errors.Is(err, ErrEnded):
				http.Error(w, err.Error(), http.StatusGone)
				return
			case err != nil:
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			case owner.ID == n.reg.ID():
				f, forwarded := ForwardedFrom(r.Context())
				io.WriteString(w, "served by "+owner.ID)
				if forwarded {
					io.WriteString(w, " for "+f.Client+" via "+f.From)
				}
				return
			}
			host := strings.Split(r.RemoteAddr, ":")[0]
			err = fwd.Forward(w, r, owner, host)
			if err == nil {
				return
			}
			if errors.Is(err, ErrLoop) || attempt > 0 {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			// Unreachable: ask again, as the owner may have just died.
		}
	})
	// The listener exists before the server starts: its address is the advertise URL.
	n.srv = httptest.NewUnstartedServer(nil)
	t.Cleanup(n.srv.Close)
	cfg := fastConfig(t, id)
	cfg.AdvertiseURL = "http://" + n.srv.Listener.Addr().String() + "/"
	n.reg = db.start(t, cfg)
	var err error
	auth, err = NewAuthenticator(AuthConfig{Secret: testSecret, InstanceID: id, Now: n.reg.Now, Log: testLogger(t)})
	must(t, err)
	fwd, err = NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: id, Now: n.reg.Now, DialTimeout: time.Second, Log: testLogger(t)})
	must(t, err)
	t.Cleanup(fwd.Close)
	n.srv.Config.Handler = auth.Middleware(handler)
	n.srv.Start()
	return n
}

// TestWiringForwardToOwner: a session claimed on b is served by b whichever instance the
// client asks; when b dies, asking a answers the session as ended (its owner died), never a
// hang or a plain error.
func TestWiringForwardToOwner(t *testing.T) {
	db := startDB(t)
	a, b := startNode(t, db, "a"), startNode(t, db, "b")
	ctx := ctxT(t)
	must(t, b.reg.ClaimSession(ctx, Claim{Session: "s1"}))

	get := func(n *node) (int, string) {
		resp, err := http.Get(n.srv.URL + "/kernel/s1")
		must(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get(b); code != 200 || body != "served by b" {
		t.Fatalf("from b: %d %q", code, body)
	}
	if code, body := get(a); code != 200 || body != "served by b for 127.0.0.1 via a" {
		t.Fatalf("from a: %d %q", code, body)
	}

	b.reg.crash()
	b.srv.Close()
	eventually(t, 20*time.Second, "a to answer s1 as ended", func() bool {
		code, body := get(a)
		if code != http.StatusGone && code != http.StatusBadGateway {
			t.Fatalf("from a after b died: %d %q", code, body)
		}
		return code == http.StatusGone && strings.Contains(body, "instance b")
	})
}
