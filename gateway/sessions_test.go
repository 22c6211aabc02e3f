package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

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

// A poll arriving just as a client's presence expires used to re-arm a
// timer that had fired: its func ran twice, the second time calling a
// nil detach in a timer goroutine (killing the process) after
// decrementing the gauge twice.
func TestPollPresenceExpiresOnce(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	sess := env.gw.sessions.get(k.ID)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20000 {
				sess.KeepAttached("racer"+strconv.Itoa(g%2), time.Duration(i%50)*time.Microsecond)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "polling clients detached", func() bool { _, n, _ := sess.Snapshot(); return n == 0 })
	if v, ok := env.metricValue(`cellgate_clients{transport="polling"}`); !ok || v != 0 {
		t.Errorf("polling clients gauge %v (present %v), want 0", v, ok)
	}
}

// A since the session never handed out is a client error, and a huge
// one must not overflow the replay log's arithmetic.
func TestSinceBeyondTheLastMessage(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	frames := c.until(idleAfter(c.execute("1")))
	last := frames[len(frames)-1].Seq
	for _, since := range []string{"18446744073709551615", "9223372036854775808", itoa(last + 5)} {
		var e apiError
		resp := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=0&since="+since, "", "", &e)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "beyond") {
			t.Errorf("poll since=%s: %d %+v", since, resp.StatusCode, e)
		}
		_, wsResp, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/"+k.ID+"/channels?since="+since), nil)
		if err == nil || wsResp == nil || wsResp.StatusCode != http.StatusBadRequest {
			t.Errorf("websocket since=%s: %v %v", since, err, wsResp)
		}
	}
	// since = last is fine: nothing yet, then what comes next.
	var resp pollResponse
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=0&since="+itoa(last), "", "", &resp); r.StatusCode != http.StatusOK || len(resp.Messages) != 0 {
		t.Errorf("poll since=last: %d %+v", r.StatusCode, resp)
	}
}

// A kernel id must not be a way around the Jupyter API's token: the
// Sage-cell routes only see Sage-cell sessions, and the other way round.
func TestKernelIDsStayInTheirAPI(t *testing.T) {
	const token = "secret-token"
	env := newTestEnv(t, 2, 6, func(c *Config) { c.Token = token })
	auth := http.Header{"Authorization": {"token " + token}}
	var model kernelModel
	if resp := env.doWith(http.MethodPost, "/api/kernels", auth, "", &model); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/kernels: %d", resp.StatusCode)
	}
	id := model.ID
	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/kernel/" + id + "/poll?client=x&wait=0", ""},
		{http.MethodPost, "/kernel/" + id + "/poll?client=x", `{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":"print(1)"}}`},
		{http.MethodPost, "/kernel/" + id + "/interrupt", ""},
		{http.MethodGet, "/kernel/" + id + "/files/a.txt", ""},
		{http.MethodDelete, "/kernel/" + id, ""},
	} {
		var e apiError
		if resp := env.do(r.method, r.path, "application/json", r.body, &e); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s without the token: %d %+v", r.method, r.path, resp.StatusCode, e)
		}
	}
	if _, resp, err := websocket.DefaultDialer.Dial(env.wsURL("/kernel/"+id+"/channels"), nil); err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("Sage-cell websocket to a Jupyter kernel: %v %v", err, resp)
	}
	if env.gw.sessions.get(id) == nil {
		t.Fatal("the Jupyter kernel ended through a Sage-cell route")
	}
	sage := env.newKernel(url.Values{"timeout": {"60"}})
	if resp := env.doWith(http.MethodGet, "/api/kernels/"+sage.ID, auth, "", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a Sage-cell kernel through the Jupyter API: %d", resp.StatusCode)
	}
}

// Concurrent starts from one address used to all pass the per-address
// check, which was made before the (slow) lease and counted only
// registered sessions.
func TestConcurrentStartsRespectTheAddressCap(t *testing.T) {
	env := newTestEnv(t, 2, 8, func(c *Config) { c.MaxKernelsPerAddr = 2 })
	env.waitWarm()
	codes := make(chan int, 6)
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, nil)
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[http.StatusOK] != 2 || count[http.StatusTooManyRequests] != 4 {
		t.Errorf("answers %v, want 2×200 and 4×429", count)
	}
	env.gw.sessions.mu.Lock()
	live, reserved := len(env.gw.sessions.live), env.gw.sessions.perAddr["127.0.0.1"]
	env.gw.sessions.mu.Unlock()
	if live != 2 || reserved != 2 {
		t.Errorf("%d sessions, %d slots held for the address; want 2 and 2", live, reserved)
	}
}

// A session that ends at once (here: its lifespan) used to end before its
// forget hook was added, and stayed registered for good.
func TestSessionEndingAtOnceIsForgotten(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.MaxLifespan = time.Nanosecond; c.MaxKernelsPerAddr = 1 })
	for range 3 {
		var k kernelAnswer
		resp := env.postForm("/kernel", url.Values{"timeout": {"60"}}, &k)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /kernel: %d %+v (a slot of an ended session was not given back?)", resp.StatusCode, k)
		}
		env.waitEnded(k.ID)
	}
	waitFor(t, "address slots given back", func() bool {
		env.gw.sessions.mu.Lock()
		defer env.gw.sessions.mu.Unlock()
		return len(env.gw.sessions.perAddr) == 0 && len(env.gw.sessions.live) == 0
	})
}

// Notebook sessions are read while PATCH changes them (run with -race).
func TestNotebookSessionsConcurrentPatch(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var created map[string]any
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", `{"path":"a.ipynb","type":"notebook","kernel":{"name":"python3"}}`, &created); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/sessions: %d %v", resp.StatusCode, created)
	}
	id := created["id"].(string)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if g%2 == 0 {
					env.do(http.MethodPatch, "/api/sessions/"+id, "application/json", fmt.Sprintf(`{"path":"p%d-%d.ipynb","name":"n%d"}`, g, i, i), nil)
				} else {
					env.do(http.MethodGet, "/api/sessions/"+id, "", "", nil)
					env.do(http.MethodGet, "/api/sessions", "", "", nil)
				}
			}
		}()
	}
	wg.Wait()
	var got map[string]any
	if resp := env.do(http.MethodGet, "/api/sessions/"+id, "", "", &got); resp.StatusCode != http.StatusOK || !strings.HasSuffix(got["path"].(string), ".ipynb") {
		t.Errorf("after the patches: %d %v", resp.StatusCode, got)
	}
}

// Notebook sessions are bounded per kernel, in field size, and go with
// their kernel.
func TestNotebookSessionBounds(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	body := func(path string) string {
		b, _ := json.Marshal(map[string]any{"path": path, "type": "notebook", "kernel": map[string]string{"id": model.ID}})
		return string(b)
	}
	var e apiError
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", body(strings.Repeat("p", maxNotebookField+1)), &e); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("over-long path: %d %+v", resp.StatusCode, e)
	}
	var first, again map[string]any
	env.do(http.MethodPost, "/api/sessions", "application/json", body("same.ipynb"), &first)
	env.do(http.MethodPost, "/api/sessions", "application/json", body("same.ipynb"), &again)
	if first["id"] == nil || first["id"] != again["id"] {
		t.Errorf("the same path and kernel gave sessions %v and %v", first["id"], again["id"])
	}
	refused := 0
	for i := range maxNotebooksPerKernel + 5 {
		resp := env.do(http.MethodPost, "/api/sessions", "application/json", body(fmt.Sprintf("n%d.ipynb", i)), nil)
		if resp.StatusCode == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused != 6 { // one slot went to same.ipynb
		t.Errorf("%d sessions refused past the per-kernel cap of %d, want 6", refused, maxNotebooksPerKernel)
	}
	env.do(http.MethodDelete, "/api/kernels/"+model.ID, "", "", nil)
	env.waitEnded(model.ID)
	if n := len(env.gw.notebooks.all()); n != 0 {
		t.Errorf("%d notebook sessions outlive their kernel", n)
	}
}

// PATCH to a new kernel moves the notebook session to it and ends the old
// one. Ending the old kernel first used to forget this notebook session
// with it: the PATCH answered 404 and left the new kernel running.
func TestNotebookSessionPatchToNewKernel(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var created struct {
		ID     string      `json:"id"`
		Kernel kernelModel `json:"kernel"`
	}
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", `{"path":"a.ipynb","type":"notebook","kernel":{"name":"python3"}}`, &created); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/sessions: %d %+v", resp.StatusCode, created)
	}
	old := created.Kernel.ID
	var patched struct {
		ID     string      `json:"id"`
		Kernel kernelModel `json:"kernel"`
	}
	resp := env.do(http.MethodPatch, "/api/sessions/"+created.ID, "application/json", `{"kernel":{"name":"python3"}}`, &patched)
	if resp.StatusCode != http.StatusOK || patched.Kernel.ID == "" || patched.Kernel.ID == old {
		t.Fatalf("PATCH to a new kernel: %d %+v (old kernel %s)", resp.StatusCode, patched, old)
	}
	env.waitEnded(old)
	var got struct {
		Kernel kernelModel `json:"kernel"`
	}
	if resp := env.do(http.MethodGet, "/api/sessions/"+created.ID, "", "", &got); resp.StatusCode != http.StatusOK || got.Kernel.ID != patched.Kernel.ID {
		t.Errorf("GET after the PATCH: %d, kernel %s, want %s", resp.StatusCode, got.Kernel.ID, patched.Kernel.ID)
	}
	if env.gw.sessions.get(patched.Kernel.ID) == nil {
		t.Error("the new kernel is gone")
	}
}
