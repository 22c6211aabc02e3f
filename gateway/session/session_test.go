package session

import (
	"encoding/json"
	"testing"

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
	f.Fuzz(func(t *testing.T, metadata, content []byte, permalinkID string, wantsFiles bool) {
		m := &jupytermsg.Message{Metadata: metadata, Content: content}
		out := completeReply(m, permalinkID, wantsFiles, []string{"a.png"})
		if permalinkID != "" && isObject(metadata) && !json.Valid(out.Metadata) {
			t.Fatalf("metadata %q became %q", metadata, out.Metadata)
		}
		if wantsFiles && isObject(content) && !json.Valid(out.Content) {
			t.Fatalf("content %q became %q", content, out.Content)
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
