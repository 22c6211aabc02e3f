package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func freeAddr(t *testing.T) string {
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
			resp, err := http.PostForm(base+"/service", url.Values{"code": {"print(6*7)"}})
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
			var cell map[string]string
			json.NewDecoder(resp.Body).Decode(&cell)
			resp.Body.Close()
			if cell["code"] != "print(6*7)" {
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
