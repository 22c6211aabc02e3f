package gateway

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// idleConnHolder is the client that holds the idle connections, run as a
// process of its own so that /proc/self of the benchmark is the gateway's
// alone. It opens argv[3] connections from 127.0.0.1 to argv[1]:argv[2],
// one after another; on each it makes one keep-alive GET /healthz and
// keeps the connection open and idle if it was answered 200 (accepted),
// closes it if 429 (refused by the per-address cap), or counts it failed.
// It prints the counts as JSON, then holds the accepted ones until its
// stdin closes.
const idleConnHolder = `
import json, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
request = b"GET /healthz HTTP/1.1\r\nHost: cellgate\r\n\r\n"

def answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        body += chunk
    return int(lines[0].split(b" ")[1])

held, counts = [], {"accepted": 0, "refused": 0, "failed": 0, "error": ""}
for _ in range(want):
    s = socket.socket()
    try:
        s.settimeout(30)
        s.bind(("127.0.0.1", 0))
        s.connect((host, port))
        s.sendall(request)
        status = answer(s)
    except OSError as e:
        s.close()
        counts["failed"] += 1
        counts["error"] = str(e)
        if e.errno in (23, 24):  # this process is out of descriptors
            break
        continue
    if status == 200:
        held.append(s)
        counts["accepted"] += 1
    else:
        s.close()
        counts["refused" if status == 429 else "failed"] += 1
print(json.dumps(counts), flush=True)
sys.stdin.read()
`

// idleConnCounts is what idleConnHolder reports.
type idleConnCounts struct {
	Accepted int    `json:"accepted"`
	Refused  int    `json:"refused"`
	Failed   int    `json:"failed"`
	Error    string `json:"error"`
}

// BenchmarkIdleConnections serves the gateway as cellgate serve does
// (HTTPServer and Listener: timeouts and the per-address connection cap),
// has another process open 10,000 idle keep-alive connections to it from
// 127.0.0.1, and while they are held measures GET /healthz from 127.0.0.2
// (a new connection each, as a new visitor's) and the gateway's resident
// memory and open descriptors. It tries fewer than 10,000 when this
// process's open-file limit would not hold them (tried_conns). "default" runs the default cap
// (--max-connections-per-address); "uncapped" what one address could
// hold before there was a cap. The connections are opened again for each
// run of the function: -benchtime=300x runs it once. The idle timeout
// (60 s) must not pass during a run.
func BenchmarkIdleConnections(b *testing.B) {
	const attempts = 10000
	for _, variant := range []struct {
		name     string
		perAddr  int
		accepted func(int) bool
	}{
		{"default", 0, func(n int) bool { return n == DefaultConfig().MaxConnsPerAddr }},
		{"uncapped", 1 << 30, func(n int) bool { return n > DefaultConfig().MaxConnsPerAddr }},
	} {
		b.Run(variant.name, func(b *testing.B) {
			env := newTestEnv(b, 0, 1, func(c *Config) { c.MaxConnsPerAddr = variant.perAddr })
			ts := httptest.NewUnstartedServer(nil)
			ts.Config = env.gw.HTTPServer(env.gw.Handler())
			ts.Listener = env.gw.Listener(ts.Listener)
			ts.Start()
			b.Cleanup(ts.Close)
			host, port, _ := net.SplitHostPort(strings.TrimPrefix(ts.URL, "http://"))

			fdsBefore := openFDs(b)
			// The gateway must keep descriptors for its own work: past its
			// limit it could not accept even the connections of others.
			var limit syscall.Rlimit
			if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
				b.Fatal(err)
			}
			tried := min(attempts, int(limit.Cur)-fdsBefore-100)
			counts := holdIdleConns(b, host, port, tried)
			if !variant.accepted(counts.Accepted) {
				b.Fatalf("%d connections accepted (%+v): not what the cap allows", counts.Accepted, counts)
			}
			client := clientFrom(secondAddr)
			latencies := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				began := time.Now()
				resp, err := client.Get(ts.URL + "/healthz")
				if err != nil {
					b.Fatalf("GET /healthz from %s while %d connections are held: %v", secondAddr, counts.Accepted, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("GET /healthz from %s: %d", secondAddr, resp.StatusCode)
				}
				latencies = append(latencies, time.Since(began))
			}
			b.StopTimer()
			slices.Sort(latencies)
			b.ReportMetric(float64(tried), "tried_conns")
			b.ReportMetric(float64(counts.Accepted), "accepted_conns")
			b.ReportMetric(float64(counts.Refused), "refused_conns")
			b.ReportMetric(float64(counts.Failed), "failed_conns")
			b.ReportMetric(ms(latencies[len(latencies)/2]), "healthz_p50_ms")
			b.ReportMetric(ms(latencies[len(latencies)*99/100]), "healthz_p99_ms")
			b.ReportMetric(float64(residentBytes(b))/(1<<20), "rss_MiB")
			b.ReportMetric(float64(openFDs(b)), "fds")
			b.ReportMetric(float64(fdsBefore), "fds_before")
		})
	}
}

// holdIdleConns starts idleConnHolder and waits for its counts; the
// connections it holds are let go when the benchmark ends.
func holdIdleConns(b *testing.B, host, port string, attempts int) idleConnCounts {
	b.Helper()
	cmd := exec.Command("python3", "-c", idleConnHolder, host, port, strconv.Itoa(attempts))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		b.Fatalf("connection holder: %v", err)
	}
	var counts idleConnCounts
	if err := json.Unmarshal(line, &counts); err != nil {
		b.Fatalf("connection holder said %q: %v", line, err)
	}
	return counts
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// openFDs is how many descriptors this process has open.
func openFDs(b *testing.B) int {
	b.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	return len(entries)
}

// residentBytes is this process's resident set (VmRSS).
func residentBytes(b *testing.B) int64 {
	b.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				b.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kib << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}
