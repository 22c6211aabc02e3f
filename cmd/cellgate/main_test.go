package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/deploy/localcluster"
	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// The test binary doubles as the cellgate command, so the signal test runs
// the real main in a child process it can send SIGTERM to.
func TestMain(m *testing.M) {
	if os.Getenv("CELLGATE_TEST_AS_MAIN") == "1" {
		os.Args = append([]string{"cellgate"}, strings.Fields(os.Getenv("CELLGATE_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSIGTERMDrains starts cellgate as an operator does, with a session
// computing, sends SIGTERM, and checks what the operator and the client
// see: the start-up line, the client told why its session ended, one end
// line per session, a clean exit and nothing left behind.
func TestSIGTERMDrains(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	runtimeDir, err := os.MkdirTemp("/tmp", "cgsig")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)
	addr := freeAddr(t)
	args := []string{"serve", "--listen", addr, "--data-dir", dataDir, "--runtime-dir", runtimeDir,
		"--sandbox", "none", "--pool", "python3=1", "--drain-timeout", "15s", "--log-format", "json"}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CELLGATE_TEST_AS_MAIN=1", "CELLGATE_TEST_ARGS="+strings.Join(args, " "))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := &localcluster.Logs{}
	logsDone := make(chan struct{})
	go func() { logs.Read(stderr); close(logsDone) }()
	exited := make(chan error, 1)
	go func() { <-logsDone; exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
	}()

	base := "http://" + addr
	waitReady(t, base)
	start := logs.Find("cellgate serving")
	if start == nil {
		t.Fatalf("no start-up line in %v", logs.Tail(1000))
	}
	for _, field := range []string{"listen", "pool", "sandbox", "database"} {
		if start[field] == nil || start[field] == "" {
			t.Errorf("start-up line lacks %q: %v", field, start)
		}
	}
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		t.Fatal(err)
	}
	if files := logs.Find("open-file limit (RLIMIT_NOFILE)"); files == nil {
		t.Errorf("no line with the open-file limit in %v", logs.Tail(1000))
	} else if n, _ := files["open_files"].(float64); uint64(n)+1 < limit.Max || files["open_files_hard"] != float64(limit.Max) {
		t.Errorf("open-file limit logged %v, hard %v; the hard limit is %d", files["open_files"], files["open_files_hard"], limit.Max)
	}

	resp, err := http.PostForm(base+"/kernel", url.Values{"timeout": {"60"}, "language": {"python"}})
	if err != nil {
		t.Fatal(err)
	}
	var k struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&k)
	resp.Body.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/kernel/"+k.ID+"/channels?session_id=sig", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	req := `{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"busy"},"parent_header":{},"metadata":{},"content":{"code":"import time\nwhile True: time.sleep(0.05)","silent":false}}`
	if err := ws.WriteMessage(websocket.TextMessage, []byte(req)); err != nil {
		t.Fatal(err)
	}
	readUntil(t, ws, func(f map[string]any) bool { return state(f) == "busy" })

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	dead := readUntil(t, ws, func(f map[string]any) bool { return state(f) == "dead" })
	if reason, _ := dead["content"].(map[string]any)["reason"].(string); !strings.Contains(reason, "shutting down") {
		t.Errorf("client told %q, want the server shutting down", reason)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("cellgate exited with %v after SIGTERM; log:\n%s", err, logs.Tail(1000))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("cellgate did not exit after SIGTERM")
	}
	if logs.Find("cellgate stopped") == nil {
		t.Errorf("no final line after SIGTERM in %v", logs.Tail(1000))
	}
	end := logs.Find("session ended")
	if end == nil {
		t.Fatalf("no session end line in %v", logs.Tail(1000))
	}
	for _, field := range []string{"session", "kernel", "remote", "duration", "executions", "reason"} {
		if _, ok := end[field]; !ok {
			t.Errorf("session end line lacks %q: %v", field, end)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dataDir, "kernels")); len(left) != 0 {
		t.Errorf("kernel work dirs left after SIGTERM: %d", len(left))
	}
	if left, _ := os.ReadDir(runtimeDir); len(left) != 0 {
		t.Errorf("runtime dir not cleaned after SIGTERM: %d entries", len(left))
	}
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	for i := 0; i < 1200; i++ {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("never ready")
}

func state(f map[string]any) string {
	content, _ := f["content"].(map[string]any)
	s, _ := content["execution_state"].(string)
	return s
}

func readUntil(t *testing.T, ws *websocket.Conn, match func(map[string]any) bool) map[string]any {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("websocket: %v", err)
		}
		var f map[string]any
		if json.Unmarshal(data, &f) == nil && match(f) {
			return f
		}
	}
}

func freeAddr(t *testing.T) string {
	if testing.Short() {
		t.Skip("starts cellgate with real kernels and the embedded database: slow; make test runs it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeStartsAndDrains runs cellgate serve as an operator would: it
// gets ready, computes, keeps permalinks across a restart, and stops
// cleanly on cancellation (SIGTERM).
func TestServeStartsAndDrains(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	runtimeDir, err := os.MkdirTemp("/tmp", "cgsrv")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)
	var permalink string
	for round := range 2 {
		addr := freeAddr(t)
		o, err := parseOptions([]string{"--listen", addr, "--data-dir", dataDir, "--runtime-dir", runtimeDir,
			"--sandbox", "none", "--pool", "python3=1", "--drain-timeout", "20s"}, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- serve(ctx, o, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)) }()
		base := "http://" + addr
		ready := false
		for i := 0; i < 600 && !ready; i++ {
			if resp, err := http.Get(base + "/readyz"); err == nil {
				ready = resp.StatusCode == http.StatusOK
				resp.Body.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !ready {
			cancel()
			t.Fatal("never ready")
		}
		if round == 0 {
			resp, err := http.PostForm(base+"/service", url.Values{"code": {"print(6*7)"}, "language": {"python"}})
			if err != nil {
				t.Fatal(err)
			}
			var res struct{ Stdout string }
			json.NewDecoder(resp.Body).Decode(&res)
			resp.Body.Close()
			if res.Stdout != "42\n" {
				t.Errorf("service: %+v", res)
			}
			resp, err = http.PostForm(base+"/permalink", url.Values{"code": {"print(6*7)"}})
			if err != nil {
				t.Fatal(err)
			}
			var p struct{ Query string }
			json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			permalink = p.Query
		} else {
			resp, err := http.Get(base + "/permalink?q=" + permalink)
			if err != nil {
				t.Fatal(err)
			}
			var cell []string // the Sage cell's [code, language, interacts]
			json.NewDecoder(resp.Body).Decode(&cell)
			resp.Body.Close()
			if len(cell) != 3 || cell[0] != "print(6*7)" {
				t.Errorf("permalink %q after restart: %v", permalink, cell)
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("serve: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("serve did not stop")
		}
		if left, _ := os.ReadDir(runtimeDir); len(left) != 0 {
			t.Errorf("runtime dir not cleaned: %d entries", len(left))
		}
		if left, _ := os.ReadDir(filepath.Join(dataDir, "kernels")); len(left) != 0 {
			t.Errorf("kernel work dirs left: %d", len(left))
		}
	}
}

// raiseFileLimit lifts a low soft RLIMIT_NOFILE to the hard limit.
func TestRaiseFileLimit(t *testing.T) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if l.Max <= 1024 {
		t.Skipf("hard limit %d leaves nothing to raise", l.Max)
	}
	low := l
	low.Cur = 1024
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	got, _, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if got != l.Max || l.Cur != l.Max {
		t.Errorf("after raiseFileLimit: reported %d, soft %d, hard %d", got, l.Cur, l.Max)
	}
}

func TestUnsandboxedRefusedOnPublicAddress(t *testing.T) {
	for listen, public := range map[string]bool{"127.0.0.1:8888": false, "localhost:1": false, "[::1]:1": false, "0.0.0.0:8888": true, ":8888": true, "192.0.2.1:80": true} {
		_, err := newLauncher(options{sandbox: "none", listen: listen}, zerolog.Nop())
		if public != (err != nil) {
			t.Errorf("%s: err = %v", listen, err)
		}
		if _, err := newLauncher(options{sandbox: "none", listen: listen, allowUnsafe: true}, zerolog.Nop()); err != nil {
			t.Errorf("%s forced: %v", listen, err)
		}
	}
	if _, err := newLauncher(options{sandbox: "chroot"}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "bwrap or none") {
		t.Errorf("unknown sandbox: %v", err)
	}
}
