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

// The series operators watch carry data: kernel starts (the first fill
// included), storage latency by op, the permalink queue, sessions by
// transport.
func TestMetricsCarryData(t *testing.T) {
	env, _ := newStorageEnv(t)
	env.waitWarm()
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	_, _, links := execFiles(c, "open('m.txt', 'w').write('m')")
	if len(links) != 1 {
		t.Fatalf("links %+v", links)
	}
	fetch(t, links[0].URL)
	var created struct{ Query string }
	env.postForm("/permalink", url.Values{"code": {"1"}}, &created)
	env.do(http.MethodGet, "/permalink?q="+created.Query, "", "", nil)
	env.do(http.MethodGet, "/readyz", "", "", nil)
	for _, series := range []string{
		`cellgate_kernel_start_seconds_count{kernel="python3",result="ok"}`,
		`cellgate_storage_seconds_count{op="upload"}`,
		`cellgate_storage_seconds_count{op="permalink_save"}`,
		`cellgate_storage_seconds_count{op="permalink_lookup"}`,
		`cellgate_storage_seconds_count{op="file_open"}`,
		`cellgate_storage_seconds_count{op="ping"}`,
		`cellgate_sessions_by_transport{transport="websocket"}`,
	} {
		if v, ok := env.metricValue(series); !ok || v < 1 {
			t.Errorf("%s = %v (present %v)", series, v, ok)
		}
	}
	if _, ok := env.metricValue("cellgate_permalink_queue_depth"); !ok {
		t.Error("cellgate_permalink_queue_depth missing")
	}
}
