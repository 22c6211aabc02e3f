//go:build linux

package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestJupyterLabServices drives the Jupyter Server kernel API with the
// unchanged @jupyterlab/services npm package (pinned in
// testdata/jupyterlab/package-lock.json) under Node: kernelspecs, token
// auth, a kernel's life (execute, stdin, interrupt, restart, shutdown) over
// both websocket encodings, and a notebook session. The script prints one
// "ok - ..." / "not ok - ..." line per check.
func TestJupyterLabServices(t *testing.T) {
	dir := filepath.Join("testdata", "jupyterlab")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@jupyterlab", "services", "package.json")); err != nil {
		t.Fatalf("%s/node_modules is missing: run `make deps` (scripts/npm-deps.sh)", dir)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: install Node.js >= 20 and run `make deps`")
	}

	const token = "cellgate-test-token"
	env := newTestEnv(t, 2, 6, func(c *Config) { c.Token = token })
	// Clients come once the server is ready (/readyz). A kernel leased
	// within ~200 ms of becoming ready may not have its stdin connection
	// up yet, and its input_request is lost (a kernelpool race).
	env.waitWarm()

	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "compat.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CELLGATE_URL="+env.url("/"), "CELLGATE_TOKEN="+token)
	cmd.WaitDelay = 5 * time.Second
	// node must not outlive a test binary that panics.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w

	var failures []string
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			t.Log(line)
			if strings.HasPrefix(line, "not ok") {
				failures = append(failures, line)
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()

	start := time.Now()
	err = cmd.Run()
	w.Close()
	<-scanned
	t.Logf("node ran for %s", time.Since(start).Round(time.Millisecond))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("node compat.js timed out after %s", time.Since(start).Round(time.Second))
	}
	if err != nil {
		t.Fatalf("node compat.js: %v\n%s", err, strings.Join(failures, "\n"))
	}
	if len(failures) > 0 {
		t.Fatalf("node exited 0 but reported failures:\n%s", strings.Join(failures, "\n"))
	}
}
