package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeConnection writes an ipc connection file the way the pool does:
// sockets <RuntimeDir>/sock-1..5, heartbeat on sock-5.
func writeConnection(t *testing.T, runtimeDir string) string {
	t.Helper()
	conn := filepath.Join(runtimeDir, "kernel.json")
	data := fmt.Sprintf(`{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5,
"ip": %q, "key": "0123456789abcdef", "transport": "ipc", "signature_scheme": "hmac-sha256", "kernel_name": "test"}`,
		filepath.Join(runtimeDir, "sock"))
	if err := os.WriteFile(conn, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return conn
}

// heartbeatScript pings a kernel's heartbeat socket from outside the
// sandbox (the gateway's side of the ipc path).
const heartbeatScript = `
import sys, zmq
s = zmq.Context().socket(zmq.REQ)
s.setsockopt(zmq.LINGER, 0)
s.connect("ipc://" + sys.argv[1])
s.send(b"ping")
if not s.poll(10000):
    sys.exit("no heartbeat reply")
print(s.recv().decode())
`

// executeScript runs code in a kernel from outside the sandbox with
// jupyter_client (the ZMQ side proper is the pool's), and prints what the
// kernel printed.
const executeScript = `
import sys, jupyter_client
kc = jupyter_client.BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
    elif msg["msg_type"] == "error":
        out.append("\n".join(msg["content"]["traceback"]))
def busy_hook(msg):
    if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
        print("busy", flush=True)
    hook(msg)
reply = kc.execute_interactive(sys.argv[2], timeout=120, output_hook=busy_hook)
print("".join(out))
print("status:", reply["content"]["status"], reply["content"].get("ename", ""))
`

// testKernel starts argv (a Jupyter kernel) sandboxed and checks that it
// binds its five sockets where the gateway expects them, and that the
// heartbeat answers through them from outside.
func testKernel(t *testing.T, b *Bwrap, startup time.Duration, code, want, file string, argv ...string) {
	run, work := newDirs(t)
	conn := writeConnection(t, run)
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{connection_file}", conn)
	}
	k := launchIn(t, b, Request{Argv: argv, RuntimeDir: run, WorkDir: work})
	deadline := time.Now().Add(startup)
	for n := 1; n <= 5; {
		st, err := os.Stat(filepath.Join(run, fmt.Sprintf("sock-%d", n)))
		if err == nil && st.Mode()&os.ModeSocket != 0 {
			n++
			continue
		}
		select {
		case <-k.p.Done():
			t.Fatalf("kernel ended before binding sock-%d: %v\n%s", n, k.p.Err(), k.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sock-%d after %v:\n%s", n, startup, k.out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", heartbeatScript, filepath.Join(run, "sock-5")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ping" {
		t.Errorf("heartbeat through the ipc socket: %v: %s\nkernel output:\n%s", err, out, k.out)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err = exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, conn, code).CombinedOutput()
	if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "status: ok") {
		t.Errorf("execute %q: %v: %s\nkernel output:\n%s", code, err, out, k.out)
	}
	if st, err := os.Stat(filepath.Join(work, file)); err != nil || st.Size() == 0 {
		t.Errorf("the kernel's %s is not in WorkDir: %v", file, err)
	}
	// An interrupt reaches the kernel's code while it runs.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, conn, "import time\ntime.sleep(60)")
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(buf.String(), "busy") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // from busy to inside time.sleep
	if err := k.p.Signal(syscall.SIGINT); err != nil {
		t.Error(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(buf.String(), "status: error KeyboardInterrupt") {
		t.Errorf("interrupting a running cell: %v: %s\nkernel output:\n%s", err, buf.String(), k.out)
	}
	// An idle kernel ignores SIGINT; it must still be there afterwards.
	if err := k.p.Signal(syscall.SIGINT); err != nil {
		t.Error(err)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-k.p.Done():
		t.Errorf("kernel died of SIGINT: %v\n%s", k.p.Err(), k.out)
	default:
	}
}

func TestBwrapIPyKernel(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/lib/python3/dist-packages/ipykernel_launcher.py"); err != nil {
		t.Skipf("python3-ipykernel is not installed: %v", err)
	}
	b := newBwrap(t, nil)
	code := "import numpy, matplotlib.pyplot as plt\nplt.plot(numpy.arange(10))\nplt.savefig('plot.png')\nprint('sum', numpy.arange(10).sum())"
	testKernel(t, b, time.Minute, code, "sum 45", "plot.png", "/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}")
}

func TestBwrapSageKernel(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("the Sage kernel takes long to start")
	}
	if _, err := os.Stat("/usr/bin/sage"); err != nil {
		t.Skipf("sagemath-jupyter is not installed: %v", err)
	}
	b := newBwrap(t, nil)
	code := "print(factor(2^64 + 1))\nplot(sin(x), (x, 0, 6)).save('sine.png')"
	testKernel(t, b, 3*time.Minute, code, "274177 * 67280421310721", "sine.png", "/usr/bin/sage", "--python", "-m", "sage.repl.ipython_kernel", "-f", "{connection_file}")
}
