package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestMetricsAndHealth(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.waitWarm()
	if status, body, _ := fetch(t, env.url("/healthz")); status != http.StatusOK || !strings.Contains(string(body), "ok") {
		t.Errorf("healthz: %d %s", status, body)
	}
	if status, _, _ := fetch(t, env.url("/readyz")); status != http.StatusOK {
		t.Errorf("readyz with a warm pool: %d", status)
	}
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	c.until(idleAfter(c.execute("1+1")))
	c.conn.WriteMessage(1, []byte("{broken"))
	// Skip what the session may send first (a late status): the gateway's
	// error is the answer.
	c.until(func(f frame) bool { return f.Channel == "gateway" })
	status, body, _ := fetch(t, env.url("/metrics"))
	text := string(body)
	for _, want := range []string{
		`cellgate_pool_kernels{kernel="python3",state="leased"} 1`,
		`cellgate_executions_total{api="sagecell"} 1`,
		`cellgate_sessions{api="sagecell"} 1`,
		`cellgate_clients{transport="websocket_sagecell"} 1`,
		`cellgate_errors_total{kind="client_message"} 1`,
		`cellgate_messages_total{channel="shell",direction="in"} 1`,
		`cellgate_lease_wait_seconds_count{kernel="python3"} 1`,
		`cellgate_kernel_start_seconds_count{kernel="python3",result="ok"}`,
		"process_resident_memory_bytes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics (%d) lacks %s", status, want)
		}
	}
}
