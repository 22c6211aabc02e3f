package session

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/jupytermsg"
)

// FuzzPrepareExecute feeds prepareExecute execute_requests whose content
// is whatever a client sent: it either refuses them or leaves valid JSON
// for the kernel.
func FuzzPrepareExecute(f *testing.F) {
	f.Add([]byte(`{"code":"1","user_expressions":{"_sagecell_files":"x"}}`))
	f.Add([]byte(`{"code":1,"silent":"no","user_expressions":[]}`))
	f.Add([]byte(`{"code":"x","silent":true}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	// Built once: a registry per input would dominate the fuzzing time.
	metrics := NewMetrics(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, content []byte) {
		m, err := jupytermsg.New("execute_request", "client", nil, map[string]any{})
		if err != nil {
			t.Fatal(err)
		}
		m.Content = content
		// A session without a kernel: prepareExecute only reads the
		// message and its own bookkeeping.
		s := &Session{opts: Options{Config: Config{MaxPendingExecutions: 4}}, metrics: metrics,
			pending: map[string]pendingExecution{}, kernelSession: "k", replay: newReplay(10, 1<<20)}
		if err := s.prepareExecute(m); err == nil && !json.Valid(m.Content) {
			t.Fatalf("prepareExecute left content %q", m.Content)
		}
	})
}

// FuzzCompleteReply completes replies whose metadata and content are
// whatever a kernel sent.
func FuzzCompleteReply(f *testing.F) {
	f.Add([]byte(`{}`), []byte(`{"status":"ok","user_expressions":{}}`), "abc", true)
	f.Add([]byte(`null`), []byte(`{"user_expressions":null}`), "", true)
	f.Add([]byte(`[1]`), []byte(`"x"`), "p", false)
	f.Add([]byte(`{"cellgate":3}`), []byte(`{"user_expressions":[1]}`), "p", true)
	f.Add([]byte(`{}`), []byte(`{"payload":[{"source":"page","data":{}}]}`), "", true)
	f.Add([]byte(`{}`), []byte(`{"payload":7}`), "", true)
	f.Fuzz(func(t *testing.T, metadata, content []byte, permalinkID string, wantsFiles bool) {
		m := &jupytermsg.Message{Metadata: metadata, Content: content}
		out := completeReply(m, permalinkID, wantsFiles, []string{"a.png"})
		if permalinkID != "" && isObject(metadata) && !json.Valid(out.Metadata) {
			t.Fatalf("metadata %q became %q", metadata, out.Metadata)
		}
		if wantsFiles && isObject(content) {
			if !json.Valid(out.Content) {
				t.Fatalf("content %q became %q", content, out.Content)
			}
			// The files are in payload[0].new_files, as the Sage cell has them.
			var got struct {
				Payload []struct {
					NewFiles []string `json:"new_files"`
				} `json:"payload"`
			}
			if err := json.Unmarshal(out.Content, &got); err != nil || len(got.Payload) == 0 || len(got.Payload[0].NewFiles) != 1 || got.Payload[0].NewFiles[0] != "a.png" {
				t.Fatalf("content %q became %q: no payload[0].new_files", content, out.Content)
			}
		}
		if string(m.Metadata) != string(metadata) || string(m.Content) != string(content) {
			t.Fatal("completeReply changed the kernel's message in place")
		}
	})
}

func isObject(b []byte) bool {
	var v map[string]json.RawMessage
	return json.Unmarshal(b, &v) == nil
}

// A kernel_timeout's timeout is read as the Sage cell's kernels send it
// (seconds, or "inf" from Python's float("inf")), capped, and nothing a
// kernel sends gets more than the cap or a negative timeout.
func TestParseKernelTimeout(t *testing.T) {
	const limit = time.Hour
	cases := []struct {
		content string
		want    time.Duration
		ok      bool
	}{
		{`{"timeout": 30}`, 30 * time.Second, true},
		{`{"timeout": 0.5}`, 500 * time.Millisecond, true},
		{`{"timeout": 0}`, 0, true},
		{`{"timeout": "inf"}`, limit, true},
		{`{"timeout": "Infinity"}`, limit, true},
		{`{"timeout": 1e300}`, limit, true},
		{`{"timeout": -1}`, 0, false},
		{`{"timeout": "nan"}`, 0, false},
		{`{"timeout": "soon"}`, 0, false},
		{`{}`, 0, false},
		{`[]`, 0, false},
		{`{"timeout": Infinity}`, 0, false},
	}
	for _, c := range cases {
		got, ok := parseKernelTimeout([]byte(c.content), limit)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %v %v, want %v %v", c.content, got, ok, c.want, c.ok)
		}
	}
}

func FuzzParseKernelTimeout(f *testing.F) {
	for _, s := range []string{`{"timeout": 30}`, `{"timeout": "inf"}`, `{"timeout": -0}`, `{"timeout": "1e9999"}`, `{"timeout": null}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		if d, ok := parseKernelTimeout(content, time.Hour); ok && (d < 0 || d > time.Hour) {
			t.Fatalf("%q gave %v", content, d)
		}
	})
}
