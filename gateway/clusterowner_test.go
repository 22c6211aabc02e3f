package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
)

// unsteadyCluster is fakeCluster whose Locate and whose tries of an owner (Forward,
// DialWebsocket) answer from a script, one entry a call, the last repeating: an owner that cannot
// be reached, dies meanwhile, refuses a loop, or a registry that cannot be read.
type unsteadyCluster struct {
	*fakeCluster
	mu      sync.Mutex
	locates []locateAnswer
	tries   []error
	located int
	tried   int
	bodies  []string // the body of each Forward
}

type locateAnswer struct {
	loc Location
	err error
}

func (u *unsteadyCluster) script(locates []locateAnswer, tries []error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.locates, u.tries, u.located, u.tried, u.bodies = locates, tries, 0, 0, nil
}

func (u *unsteadyCluster) calls() (located, tried int, bodies []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.located, u.tried, u.bodies
}

func (u *unsteadyCluster) Locate(context.Context, string) (Location, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	a := u.locates[min(u.located, len(u.locates)-1)]
	u.located++
	return a.loc, a.err
}

func (u *unsteadyCluster) try() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.tries) == 0 {
		return errors.New("test: an owner tried that the script has no answer for")
	}
	err := u.tries[min(u.tried, len(u.tries)-1)]
	u.tried++
	return err
}

func (u *unsteadyCluster) Forward(w http.ResponseWriter, r *http.Request, peer Peer, _ string) error {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.bodies = append(u.bodies, string(body))
	u.mu.Unlock()
	if err := u.try(); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	_, err := io.WriteString(w, "answered by "+peer.ID)
	return err
}

// DialWebsocket dials peer for real (a websocket server of the test's).
func (u *unsteadyCluster) DialWebsocket(ctx context.Context, peer Peer, uri, _, _ string) (*websocket.Conn, error) {
	if err := u.try(); err != nil {
		return nil, err
	}
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(strings.TrimSuffix(peer.URL, "/"), "http")+uri, nil)
	return conn, err
}

// TestClusterOwnerAskedAgain: when a session's owner cannot be reached, the registry is asked
// once more (the owner may have just died), and its second answer is what the client gets; the
// same through the three ways a request reaches another instance's session: a route naming it
// (a long-poll), a SockJS connection's bridge, and a notebook made for its kernel, whose body is
// sent again with the second try.
func TestClusterOwnerAskedAgain(t *testing.T) {
	upgrader := websocket.Upgrader{}
	owner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if conn, err := upgrader.Upgrade(w, r, nil); err == nil {
			conn.Close()
		}
	}))
	defer owner.Close()
	uc := &unsteadyCluster{fakeCluster: newFakeCluster()}
	env := newTestEnv(t, 1, 4, func(c *Config) { c.Cluster = uc })

	const reason = "the server running this kernel (peer) stopped"
	owned := locateAnswer{loc: Location{Owner: &Peer{ID: "peer", URL: owner.URL + "/"}}}
	ended := locateAnswer{loc: Location{Ended: true, Reason: reason}}
	unreachable := fmt.Errorf("%w: test", ErrPeerUnreachable)
	cases := []struct {
		name    string
		locates []locateAnswer
		tries   []error
		// What the long-poll is answered: status, Retry-After, a part of the body.
		pollStatus int
		retryAfter string
		pollSays   string
		bridgeErr  string // "": the bridge is open; %s: the session's id
		// A notebook POST is answered by the owner, or here with 400 "no such kernel".
		notebookForwarded bool
		located, tried    int
	}{
		{"unreachable, then reached", []locateAnswer{owned}, []error{unreachable, nil},
			http.StatusOK, "", "answered by peer", "", true, 2, 2},
		{"unreachable, then ended", []locateAnswer{owned, ended}, []error{unreachable},
			http.StatusOK, "", `"reason":"` + reason + `"`, `kernel "%s" ended: ` + reason, false, 2, 1},
		{"unreachable twice", []locateAnswer{owned}, []error{unreachable},
			http.StatusServiceUnavailable, clusterRetryAfter, "the kernel's instance cannot be reached now", "the kernel's instance cannot be reached now", false, 2, 2},
		{"lookup failed", []locateAnswer{{err: errors.New("test: no database")}}, nil,
			http.StatusServiceUnavailable, clusterRetryAfter, "cannot find the kernel's instance now: test: no database", "cannot find the kernel's instance now: test: no database", false, 1, 0},
		{"a forward loop", []locateAnswer{owned}, []error{fmt.Errorf("%w: test", ErrForwardLoop)},
			http.StatusNotFound, "", "no such kernel", `no such kernel "%s"`, false, 1, 1},
		{"nobody owns it", []locateAnswer{{}}, nil,
			http.StatusNotFound, "", "no such kernel", `no such kernel "%s"`, false, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			counted := func(way string) {
				t.Helper()
				located, tried, _ := uc.calls()
				if located != tc.located || tried != tc.tried {
					t.Errorf("%s: %d lookups and %d tries of the owner, want %d and %d", way, located, tried, tc.located, tc.tried)
				}
			}

			uc.script(tc.locates, tc.tries)
			resp, err := http.Get(env.url("/kernel/" + uuid.NewString() + "/poll?client=c"))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.pollStatus || resp.Header.Get("Retry-After") != tc.retryAfter || !strings.Contains(string(body), tc.pollSays) {
				t.Errorf("long-poll: %d (Retry-After %q) %s; want %d (%q) with %q", resp.StatusCode, resp.Header.Get("Retry-After"), body, tc.pollStatus, tc.retryAfter, tc.pollSays)
			}
			counted("long-poll")

			uc.script(tc.locates, tc.tries)
			id := uuid.NewString()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := env.gw.sockjsBridge(ctx, httptest.NewRequest(http.MethodGet, "/sockjs/0/s/websocket", nil), id, "c")
			switch want := strings.ReplaceAll(tc.bridgeErr, "%s", id); {
			case want == "" && err != nil:
				t.Errorf("SockJS bridge: %v, want it open", err)
			case want != "" && (err == nil || err.Error() != want):
				t.Errorf("SockJS bridge: %v, want %q", err, want)
			}
			if conn != nil {
				conn.Close()
			}
			counted("SockJS bridge")

			uc.script(tc.locates, tc.tries)
			id = uuid.NewString()
			sent := `{"path":"n.ipynb","type":"notebook","kernel":{"id":"` + id + `"}}`
			resp, err = http.Post(env.url("/api/sessions"), "application/json", strings.NewReader(sent))
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if forwarded := resp.StatusCode == http.StatusOK && string(body) == "answered by peer"; forwarded != tc.notebookForwarded ||
				!forwarded && (resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "no such kernel "+id)) {
				t.Errorf("notebook: %d %s; forwarded: %v", resp.StatusCode, body, tc.notebookForwarded)
			}
			counted("notebook")
			if _, _, bodies := uc.calls(); len(bodies) != tc.tried || strings.Count(strings.Join(bodies, "\n"), sent) != tc.tried {
				t.Errorf("notebook: the owner was sent %q, want %q at each of %d tries", bodies, sent, tc.tried)
			}
		})
	}
}
