package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testConfig is DefaultConfig with a lifespan short enough that a test
// gone wrong cannot leave kernels behind for long.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Lifespan = 5 * time.Minute
	return cfg
}

// newBwrap skips unless the sandbox can run here (bwrap installed, root).
// Every test of the real sandbox starts here, so go test -short (make
// check) skips them here, in one place.
func newBwrap(t testing.TB, change func(*Config)) *Bwrap {
	t.Helper()
	if testing.Short() {
		t.Skip("sandbox: slow (real bwrap sandbox, needs root); run make test")
	}
	cfg := testConfig()
	if change != nil {
		change(&cfg)
	}
	if _, err := os.Stat(cfg.BwrapPath); err != nil {
		t.Skipf("bubblewrap is not installed (%v): make deps installs it", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("the bwrap sandbox needs root (it switches uids and mounts tmpfs)")
	}
	b, err := NewBwrap(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuffer collects a kernel's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// kernel is a sandboxed test process.
type kernel struct {
	p   *Process
	out *syncBuffer
	req Request
}

// newDirs makes a RuntimeDir and a WorkDir the way the pool does.
func newDirs(t testing.TB) (runtimeDir, workDir string) {
	base := t.TempDir()
	runtimeDir, workDir = filepath.Join(base, "run"), filepath.Join(base, "work")
	for _, d := range []string{runtimeDir, workDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return runtimeDir, workDir
}

// launchPy runs /usr/bin/python3 -c script in the sandbox; env is added
// to its environment.
func launchPy(t testing.TB, l Launcher, script string, env ...string) *kernel {
	t.Helper()
	run, work := newDirs(t)
	return launchIn(t, l, Request{
		Argv: []string{"/usr/bin/python3", "-c", script}, Env: env,
		RuntimeDir: run, WorkDir: work,
	})
}

func launchIn(t testing.TB, l Launcher, req Request) *kernel {
	t.Helper()
	k := &kernel{out: &syncBuffer{}, req: req}
	k.req.Output = k.out
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := l.Launch(ctx, k.req)
	if err != nil {
		t.Fatal(err)
	}
	k.p = p
	// Runs before t.TempDir's removal: Close unmounts what covers the dirs.
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return k
}

// wait waits for the process to end and returns its Err.
func (k *kernel) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-k.p.Done():
		return k.p.Err()
	case <-time.After(d):
		t.Fatalf("kernel still running after %v; output:\n%s", d, k.out)
		return nil
	}
}

// waitFor waits until the output contains s.
func (k *kernel) waitFor(t testing.TB, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(k.out.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output after %v:\n%s", s, d, k.out)
		}
		select {
		case <-k.p.Done():
			if !strings.Contains(k.out.String(), s) {
				t.Fatalf("kernel ended (%v) without printing %q:\n%s", k.p.Err(), s, k.out)
			}
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// result waits for the process to end and decodes the last line it
// printed, which the test scripts make a JSON object.
func (k *kernel) result(t testing.TB, into any) {
	t.Helper()
	if err := k.wait(t, time.Minute); err != nil {
		t.Fatalf("kernel failed: %v\n%s", err, k.out)
	}
	lines := strings.Split(strings.TrimSpace(k.out.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), into); err != nil {
		t.Fatalf("kernel output is not JSON: %v\n%s", err, k.out)
	}
}

// hostileDir holds the hostile payloads, kept once for this package's
// tests and the gateway's; its README says what each attacks and prints.
const hostileDir = "../testdata/hostile"

// hostile returns the hostile payload name as a script: a first line that
// sets ARGS to args (through JSON), then the payload. Scripts concatenated
// run one after the other in one process, each printing its JSON line.
func hostile(t testing.TB, name string, args map[string]any) string {
	t.Helper()
	code, err := os.ReadFile(filepath.Join(hostileDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if args == nil {
		args = map[string]any{}
	}
	js, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	lit, _ := json.Marshal(string(js)) // a JSON string is a Python string literal
	return fmt.Sprintf("ARGS = __import__(\"json\").loads(%s)\n%s\n", lit, code)
}

// lingering keeps the script's process alive for d after it is done,
// for what the test checks while it runs (its files, its children).
func lingering(script string, d time.Duration) string {
	return fmt.Sprintf("%s\nimport time\ntime.sleep(%g)\n", script, d.Seconds())
}

// results waits until the output holds a JSON line (one starting with
// "{", as the hostile payloads print) for each of into, and decodes them
// in order, while the process may run on.
func (k *kernel) results(t testing.TB, d time.Duration, into ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for ended := false; ; {
		var lines []string
		for _, l := range strings.SplitAfter(k.out.String(), "\n") {
			if strings.HasPrefix(l, "{") && strings.HasSuffix(l, "\n") {
				lines = append(lines, l)
			}
		}
		if len(lines) >= len(into) {
			for i, v := range into {
				if err := json.Unmarshal([]byte(lines[i]), v); err != nil {
					t.Fatalf("kernel output line %d is not its result: %v\n%s", i+1, err, k.out)
				}
			}
			return
		}
		if ended {
			t.Fatalf("kernel ended (%v) after %d of %d results:\n%s", k.p.Err(), len(lines), len(into), k.out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d results after %v:\n%s", len(lines), len(into), d, k.out)
		}
		select {
		case <-k.p.Done():
			ended = true // one more look: the output may have come last
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// witnessScript answers each SIGUSR1 with a line: a kernel that must keep
// working while its neighbour misbehaves.
const witnessScript = `
import signal, time
n = 0
def answer(sig, frame):
    global n
    n += 1
    print("alive", n, flush=True)
signal.signal(signal.SIGUSR1, answer)
print("witness ready", flush=True)
while True:
    time.sleep(1)
`

func startWitness(t testing.TB, l Launcher) *kernel {
	t.Helper()
	w := launchPy(t, l, witnessScript)
	w.waitFor(t, "witness ready", 30*time.Second)
	return w
}

// checkAlive asserts the witness still answers.
func (k *kernel) checkAlive(t testing.TB) {
	t.Helper()
	n := strings.Count(k.out.String(), "alive")
	if err := k.p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatalf("witness: %v\n%s", err, k.out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(k.out.String(), "alive") <= n {
		if time.Now().After(deadline) {
			t.Fatalf("witness stopped answering:\n%s", k.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// uidProcesses lists the host pids running as uid.
func uidProcesses(t testing.TB, uid int) []int {
	t.Helper()
	m, err := procUIDs(uid, uid+1)
	if err != nil {
		t.Fatal(err)
	}
	return m[uid]
}
