package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSockJSWithSockJSClient drives /sockjs as the Sage cell's own front
// end does, with the unchanged sockjs-client from npm under Node, on the
// websocket and on the xhr-polling and xhr-streaming transports: output
// the kernel printed before the page connected comes first (the replay), an
// execution's output and reply come on "<id>/channels", a completion on
// "complete" from the kernel's namespace.
func TestSockJSWithSockJSClient(t *testing.T) {
	dir := filepath.Join("testdata", "sockjs")
	node := nodeFor(t, dir, "sockjs-client")
	env := newTestEnv(t, 2, 6, nil)
	for _, transport := range []string{"websocket", "xhr-polling", "xhr-streaming"} {
		t.Run(transport, func(t *testing.T) {
			k := env.newKernel(url.Values{"timeout": {"60"}})
			// Output from before the page connects, as a linked cell's.
			c := env.dialSage(k.ID, "")
			c.until(idleAfter(c.execute("print('before the page')")))

			ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, "client.js", env.url("/"), k.ID, transport)
			cmd.Dir = dir
			cmd.WaitDelay = 5 * time.Second
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			out, err := cmd.Output()
			t.Logf("node: %s", out)
			var seen struct {
				Transport string   `json:"transport"`
				Stdout    string   `json:"stdout"`
				Status    string   `json:"status"`
				Idle      bool     `json:"idle"`
				Matches   []string `json:"matches"`
				Errors    []string `json:"errors"`
				Early     string   `json:"early"`
			}
			if jerr := json.Unmarshal(out, &seen); jerr != nil || err != nil {
				t.Fatalf("node: %v, output %q (%v)", err, out, jerr)
			}
			if seen.Transport != transport {
				t.Errorf("connected over %q, asked for %q", seen.Transport, transport)
			}
			if seen.Stdout != "line 0\nline 1\nline 2\n" || seen.Status != "ok" || !seen.Idle {
				t.Errorf("execution seen as stdout %q, reply %q, idle %v", seen.Stdout, seen.Status, seen.Idle)
			}
			if !strings.Contains(seen.Early, "before the page") {
				t.Errorf("the output from before the page connected did not come first: %q", seen.Early)
			}
			if len(seen.Matches) != 1 || seen.Matches[0] != "longname_for_completion" {
				t.Errorf("completion matches %q", seen.Matches)
			}
			if len(seen.Errors) > 0 {
				t.Errorf("errors: %q", seen.Errors)
			}
		})
	}
}

// An xhr poll answered "2010 Another connection still open" because the
// previous poll's receiver was not detached yet is tried again, not sent;
// one that persists is sent.
func TestXHRPollRetriesAnotherConnection(t *testing.T) {
	calls := 0
	flaky := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls < 3 {
			_, _ = io.WriteString(w, anotherConnection+`"Another connection still open"]`+"\n")
			return
		}
		w.Header().Set("Content-Type", "application/javascript; charset=UTF-8")
		_, _ = io.WriteString(w, `a["hello"]`+"\n")
	})
	rec := httptest.NewRecorder()
	retryXHRPoll(flaky, rec, httptest.NewRequest(http.MethodPost, "/sockjs/1/abc/xhr", nil))
	if rec.Body.String() != `a["hello"]`+"\n" || calls != 3 || rec.Header().Get("Content-Type") == "" {
		t.Fatalf("after %d calls the client got %q", calls, rec.Body.String())
	}
	calls = -100 // never recovers
	rec = httptest.NewRecorder()
	retryXHRPoll(flaky, rec, httptest.NewRequest(http.MethodPost, "/sockjs/1/abc/xhr", nil))
	if !strings.HasPrefix(rec.Body.String(), anotherConnection) || calls != -100+len(xhrPollRetries())+1 {
		t.Fatalf("a 2010 that persists: %q after %d calls", rec.Body.String(), calls+100)
	}
}
