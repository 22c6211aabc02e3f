package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/gorilla/websocket"
)

func FuzzSplitPollBody(f *testing.F) {
	for _, seed := range []string{
		`{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":"1"}}`,
		`[{"channel":"shell"},{"channel":"control"}]`, ` [ ]`, `[`, `[1,2`, ``, "\n[null]", `"x"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		frames, err := splitPollBody(body)
		if err != nil {
			return
		}
		if trimmed := bytes.TrimLeft(body, jsonSpace); len(trimmed) > 0 && trimmed[0] == '[' {
			for _, fr := range frames {
				if !json.Valid(fr) {
					t.Fatalf("array element %q is not JSON", fr)
				}
			}
		} else if len(frames) != 1 || !bytes.Equal(frames[0], body) {
			t.Fatalf("a single frame came back as %q", frames)
		}
		for _, fr := range frames {
			_, _, _ = jupytermsg.DecodeJSONFrame(fr)
		}
	})
}

func TestLongPolling(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"0"}})
	client := "poller"
	msg := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"m1"},"parent_header":{},"metadata":{},"content":{"code":"print('polled')","silent":false}}`
	var sent map[string]int
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client="+client, "application/json", msg, &sent); resp.StatusCode != http.StatusAccepted || sent["sent"] != 1 {
		t.Fatalf("poll send: %d %v", resp.StatusCode, sent)
	}
	var out string
	since := uint64(0)
	var lastSeq uint64
	replied, idle := false, false
	for polls := 0; !replied || !idle; polls++ {
		if polls == 100 {
			t.Fatalf("no reply and idle status after %d polls (output %q)", polls, out)
		}
		var resp pollResponse
		env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client="+client+"&since="+itoa(since)+"&wait=5", "", "", &resp)
		for _, raw := range resp.Messages {
			var f frame
			_ = json.Unmarshal(raw, &f)
			if f.Seq <= lastSeq {
				t.Fatalf("seq %d repeated or out of order after %d", f.Seq, lastSeq)
			}
			lastSeq = f.Seq
			if f.ParentHeader.MsgID != "m1" {
				continue
			}
			if f.Header.MsgType == "stream" {
				out += f.str("text")
			}
			replied = replied || f.Header.MsgType == "execute_reply"
			idle = idle || f.Header.MsgType == "status" && f.str("execution_state") == "idle"
		}
		since = resp.Next
	}
	if out != "polled\n" {
		t.Errorf("polled output %q", out)
	}
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	if resp := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client="+client, "application/json", msg, nil); resp.StatusCode != http.StatusGone {
		t.Errorf("send after end: %d, want 410", resp.StatusCode)
	}
}

// After a session ends, a poller between requests learns it: GET answers
// ended with the reason, POST 410.
func TestPollAfterEndTellsWhy(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil)
	env.waitEnded(k.ID)
	var resp pollResponse
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p", "", "", &resp); r.StatusCode != http.StatusOK || !resp.Ended || resp.Reason != session.EndDeleted {
		t.Errorf("GET poll after the end: %d %+v", r.StatusCode, resp)
	}
	var e apiError
	if r := env.do(http.MethodPost, "/kernel/"+k.ID+"/poll?client=p", "application/json", `{"channel":"shell","header":{"msg_type":"kernel_info_request"},"content":{}}`, &e); r.StatusCode != http.StatusGone || !strings.Contains(e.Message, session.EndDeleted) {
		t.Errorf("POST poll after the end: %d %+v", r.StatusCode, e)
	}
	if r := env.do(http.MethodGet, "/kernel/never-was/poll?client=p", "", "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("poll of an unknown kernel: %d", r.StatusCode)
	}
}

// A poll with nothing to say answers after its wait, capped by the
// server's, and a wait that is not a number is refused.
func TestPollWait(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.PollWait = 200 * time.Millisecond })
	k := env.newKernel(url.Values{"timeout": {"60"}})
	var first pollResponse
	env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=0", "", "", &first)
	for _, wait := range []string{"0.05", "3600"} {
		var resp pollResponse
		r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&since="+itoa(first.Next)+"&wait="+wait, "", "", &resp)
		if r.StatusCode != http.StatusOK || len(resp.Messages) != 0 || resp.Next != first.Next || resp.Ended {
			t.Errorf("wait=%s: %d %+v", wait, r.StatusCode, resp)
		}
	}
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/poll?client=p&wait=NaN", "", "", nil); r.StatusCode != http.StatusBadRequest {
		t.Errorf("wait=NaN: %d", r.StatusCode)
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
