package kernelpool

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// hangGuard is how long a test waits for something that must happen
// before calling it a hang. It is not a speed requirement.
const hangGuard = 2 * time.Minute

func testContext(t testing.TB) *zmq.Context {
	t.Helper()
	zctx, err := NewZMQContext(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = zctx.Term() })
	return zctx
}

// startKernel starts one kernel of spec outside any pool; it is shut down
// when the test ends.
func startKernel(t *testing.T, spec jupytermsg.Spec, change func(*KernelConfig)) *Kernel {
	t.Helper()
	zctx := testContext(t)
	cfg := testKernelConfig(t)
	cfg.Spec = spec
	if change != nil {
		change(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	k, err := StartKernel(ctx, zctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Shutdown)
	return k
}

// misbehavingSpec runs testdata/misbehaving_kernel.py in mode.
func misbehavingSpec(t *testing.T, mode string) jupytermsg.Spec {
	t.Helper()
	script, err := filepath.Abs("testdata/misbehaving_kernel.py")
	if err != nil {
		t.Fatal(err)
	}
	python := installedSpecs(t)["python3"].Argv[0]
	return jupytermsg.Spec{Name: "misbehaving-" + mode, KernelSpec: jupytermsg.KernelSpec{
		Argv: []string{python, script, mode, "-f", "{connection_file}"}, Language: "python",
	}}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatalf("hung waiting for %s", what)
	}
}

func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

func assertKernelGone(t *testing.T, k *Kernel, pgid int) {
	t.Helper()
	if !groupGone(pgid) {
		t.Errorf("process group %d still exists", pgid)
	}
	for _, d := range []string{k.runtimeDir, k.WorkDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}
}

// TestStoppedFloodedKernelShutsDown: a kernel that reads nothing, while
// senders keep pushing at it, must still be shut down, its process group
// and directories gone. Sends to it fail with ErrKernelBusy rather than
// blocking, and none of them may hold up the shutdown.
func TestStoppedFloodedKernelShutsDown(t *testing.T) {
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) {
		c.HeartbeatInterval = time.Hour // the flood is under test, not the heartbeat
	})
	pgid := k.Pid()
	if err := syscall.Kill(-pgid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	code := "x = '" + strings.Repeat("a", 64<<10) + "'"
	busy := make(chan struct{})
	var busyOnce sync.Once
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: code, UserExpressions: map[string]string{}})
				if err != nil {
					t.Error(err)
					return
				}
				err = k.Send(jupytermsg.Shell, m)
				switch {
				case errors.Is(err, ErrKernelBusy):
					busyOnce.Do(func() { close(busy) })
				case errors.Is(err, ErrKernelGone):
					return
				case err != nil:
					t.Errorf("send: %v", err)
					return
				}
			}
		}()
	}
	waitFor(t, busy, "a send to the stopped kernel to fail with ErrKernelBusy")
	shutdown := make(chan struct{})
	go func() { k.Shutdown(); close(shutdown) }()
	waitFor(t, shutdown, "Shutdown of a stopped, flooded kernel")
	wg.Wait()
	assertKernelGone(t, k, pgid)
	if !errors.Is(k.Err(), ErrKernelGone) {
		t.Errorf("Err = %v, want ErrKernelGone", k.Err())
	}
}

// TestSlowConsumerHoldsLittle: a kernel that publishes far more than its
// reader takes must not make the gateway hold it. Once the kernel has
// published everything it is stopped, so whatever can still be read was
// held by the gateway.
func TestSlowConsumerHoldsLittle(t *testing.T) {
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) { c.HeartbeatInterval = time.Hour })
	const published = 400
	code := "from IPython.display import display\nimport sys\n" +
		"for i in range(" + strconv.Itoa(published) + "):\n    display({'text/plain': 'x' * 65536}, raw=True)\n" +
		// flush returns once the iopub thread has sent everything before it.
		"sys.stdout.flush()\nopen('flooded', 'w').close()\n"
	m, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: code, UserExpressions: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, m); err != nil {
		t.Fatal(err)
	}
	flooded := filepath.Join(k.WorkDir, "flooded")
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(flooded); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel never finished publishing: %s", k.Output())
		}
	}
	if err := syscall.Kill(-k.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	held := 0
	for quiet := time.NewTimer(time.Second); ; {
		select {
		case <-k.Messages():
			held++
			quiet.Reset(time.Second)
			continue
		case <-quiet.C:
		}
		break
	}
	// The default queues (16 in Messages, 8 per socket) and a few messages
	// in socket buffers and in hand; a literal, so that raising the queues
	// fails here.
	const bound = 64
	if held > bound {
		t.Errorf("the gateway held %d of %d messages a stopped kernel published; want at most %d", held, published, bound)
	}
}

// TestExecuteWithoutIdleEndsWithContext: the idle that ends an execution
// can be dropped (iopub is a PUB socket); Execute must then end with its
// context and say what it missed, handing back the reply it did get.
func TestExecuteWithoutIdleEndsWithContext(t *testing.T) {
	k := startKernel(t, misbehavingSpec(t, "no-idle"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reply, err := Execute(ctx, k, "1+1", nil)
	if !errors.Is(err, ErrNoIdle) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want ErrNoIdle and the context's error", err)
	}
	if reply == nil || reply.Header.MsgType != "execute_reply" {
		t.Errorf("reply = %v, want the execute_reply that did arrive", reply)
	}
}

// TestShutdownEscalates: shutdown_request, then SIGTERM, then SIGKILL, each
// only when the step before did not end the kernel.
func TestShutdownEscalates(t *testing.T) {
	cases := []struct {
		mode  string
		grace time.Duration
		// want is the signal that ended the kernel; 0: it exited itself.
		want syscall.Signal
	}{
		{"obey", 30 * time.Second, 0},
		{"ignore-shutdown", time.Second, syscall.SIGTERM},
		{"ignore-term", time.Second, syscall.SIGKILL},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			k := startKernel(t, misbehavingSpec(t, c.mode), func(cfg *KernelConfig) { cfg.ShutdownGrace = c.grace })
			pgid := k.Pid()
			proc := k.process()
			k.Shutdown()
			assertKernelGone(t, k, pgid)
			var exit *exec.ExitError
			err := proc.Err()
			switch {
			case c.want == 0 && err != nil:
				t.Errorf("kernel that obeys shutdown_request ended with %v", err)
			case c.want == 0:
			case !errors.As(err, &exit):
				t.Errorf("kernel ended with %v, want signal %v", err, c.want)
			default:
				if ws := exit.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != c.want {
					t.Errorf("kernel ended with %v, want signal %v", err, c.want)
				}
			}
		})
	}
}

// TestInterruptByMessage uses a kernelspec with interrupt_mode "message",
// found through JUPYTER_PATH: the interrupt must go as interrupt_request on
// control (its reply proves it) and stop the running code.
func TestInterruptByMessage(t *testing.T) {
	base := installedSpecs(t)["python3"]
	jupyterPath := t.TempDir()
	dir := filepath.Join(jupyterPath, "kernels", "pymsg")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := `{"argv": ` + jsonStrings(base.Argv) + `, "display_name": "Python (message interrupt)", "language": "python", "interrupt_mode": "message"}`
	if err := os.WriteFile(filepath.Join(dir, "kernel.json"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"JUPYTER_PATH": jupyterPath}
	specs, problems := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(func(k string) string { return env[k] }))
	spec, ok := specs["pymsg"]
	if !ok || !spec.InterruptByMessage() {
		t.Fatalf("kernelspec in JUPYTER_PATH not found or not by message: %+v %v", spec, problems)
	}
	k := startKernel(t, spec, nil)
	req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{
		Code: "print('looping', flush=True)\nwhile True: pass", UserExpressions: map[string]string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, req); err != nil {
		t.Fatal(err)
	}
	var interruptReply, idle bool
	var ename string
	timeout := time.After(hangGuard)
	for !(interruptReply && idle) {
		select {
		case r := <-k.Messages():
			switch {
			case r.Msg.Header.MsgType == "stream" && r.Msg.ParentMsgID() == req.Header.MsgID:
				if err := k.Interrupt(); err != nil {
					t.Fatal(err)
				}
			case r.Msg.Header.MsgType == "interrupt_reply":
				interruptReply = r.Channel == jupytermsg.Control
			case r.Msg.Header.MsgType == "error" && r.Msg.ParentMsgID() == req.Header.MsgID:
				var e jupytermsg.Error
				_ = r.Msg.DecodeContent(&e)
				ename = e.EName
			case r.Msg.Header.MsgType == "status" && r.Msg.ParentMsgID() == req.Header.MsgID:
				idle = isIdle(r.Msg)
			}
		case <-timeout:
			t.Fatalf("interrupt by message: reply on control %v, idle %v", interruptReply, idle)
		}
	}
	if ename != "KeyboardInterrupt" {
		t.Errorf("interrupted code raised %q", ename)
	}
}

func jsonStrings(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}

// TestStartTimeout: a kernel that never answers fails to start once
// StartTimeout has passed, and leaves no process or directory behind.
func TestStartTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	spec := jupytermsg.Spec{Name: "mute", KernelSpec: jupytermsg.KernelSpec{
		Argv: []string{"/bin/sh", "-c", `echo $$ > "$0"; exec sleep 1000`, pidFile},
	}}
	cfg := testKernelConfig(t)
	cfg.Spec = spec
	cfg.StartTimeout = 2 * time.Second
	_, err := StartKernel(context.Background(), testContext(t), cfg)
	if !errors.Is(err, ErrStartFailed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start of a mute kernel: %v", err)
	}
	data, rerr := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if rerr != nil || pid == 0 {
		t.Fatalf("mute kernel never ran: %v", rerr)
	}
	if !groupGone(pid) {
		t.Errorf("mute kernel's group %d still exists", pid)
	}
	assertEmpty(t, cfg.RuntimeRoot, cfg.WorkRoot)
}

func assertEmpty(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if left, _ := os.ReadDir(d); len(left) != 0 {
			t.Errorf("%s holds %d leftover entries", d, len(left))
		}
	}
}

// TestIPCPathLimit: a runtime root too long for unix socket paths fails
// clearly before anything is created; one at the limit works.
func TestIPCPathLimit(t *testing.T) {
	cfg := testKernelConfig(t)
	cfg.Spec = installedSpecs(t)["python3"]
	// runtime dir = root/<36-byte uuid>; StartKernel reserves 7 more bytes for socket names.
	fits := maxIPCPath - len("/sock-5") - 37
	root := filepath.Dir(cfg.RuntimeRoot)
	atLimit := root + "/" + strings.Repeat("r", fits-len(root)-1)
	zctx := testContext(t)

	cfg.RuntimeRoot = atLimit + "r"
	_, err := StartKernel(context.Background(), zctx, cfg)
	if !errors.Is(err, ErrStartFailed) || !errors.Is(err, ErrIPCPathTooLong) {
		t.Fatalf("start with a runtime root one byte too long: %v", err)
	}
	if _, err := os.Stat(cfg.RuntimeRoot); !os.IsNotExist(err) {
		t.Errorf("runtime root created anyway: %v", err)
	}

	cfg.RuntimeRoot = atLimit
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	k, err := StartKernel(ctx, zctx, cfg)
	if err != nil {
		t.Fatalf("start with a runtime root at the limit: %v", err)
	}
	k.Shutdown()
}

// countingLauncher records how many kernel starts run at once: from
// Launch to the pool's OnStart, which StartKernel's return precedes.
type countingLauncher struct {
	sandbox.Launcher
	mu            sync.Mutex
	inFlight, max int
}

func (c *countingLauncher) Launch(ctx context.Context, req sandbox.Request) (*sandbox.Process, error) {
	c.mu.Lock()
	c.inFlight++
	c.max = max(c.max, c.inFlight)
	c.mu.Unlock()
	return c.Launcher.Launch(ctx, req)
}

func (c *countingLauncher) started(string, time.Duration, error) {
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
}

func TestMaxConcurrentStarts(t *testing.T) {
	for _, limit := range []int{1, 2} {
		t.Run(strconv.Itoa(limit), func(t *testing.T) {
			counter := &countingLauncher{Launcher: sandbox.None{}}
			cfg := testKernelConfig(t)
			cfg.Launcher = counter
			p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{"python3": 3}, MaxKernels: 3,
				MaxConcurrentStarts: limit, Kernel: cfg, OnStart: counter.started})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close(context.Background())
			for deadline := time.Now().Add(hangGuard); !(p.Stats()[0].Ready == 3); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("pool never warmed: %+v", p.Stats())
				}
			}
			counter.mu.Lock()
			defer counter.mu.Unlock()
			if counter.max > limit {
				t.Errorf("%d kernels started at once, limit %d", counter.max, limit)
			}
		})
	}
}

// TestStdinMonitorFailureFailsFast: if the stdin handshake can no longer
// be seen, start-up must hear of it at once, not at StartTimeout.
func TestStdinMonitorFailureFailsFast(t *testing.T) {
	zctx := testContext(t)
	monitor, err := zctx.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	monitor.Close()
	s := &sockets{stop: make(chan struct{}), stdinReady: make(chan struct{}), stdinFailed: make(chan struct{})}
	s.wg.Add(1)
	go s.watchStdinHandshake(monitor)
	waitFor(t, s.stdinFailed, "the stdin watcher to report its failure")
	if s.stdinErr == nil {
		t.Error("stdinFailed closed without an error")
	}
	s.wg.Wait()
}

// TestLateWatcherAfterRestart: the watcher of a process that Restart
// replaced may run only after Restart has finished; it must not kill the
// new process then.
func TestLateWatcherAfterRestart(t *testing.T) {
	k := startKernel(t, installedSpecs(t)["python3"], nil)
	old := k.process()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	<-old.Done()
	k.processExited(old)
	if err := k.Err(); err != nil {
		t.Fatalf("the old process's exit ended the restarted kernel: %v", err)
	}
	if out, _ := run(t, k, "1+1"); out.result != "2" {
		t.Errorf("restarted kernel: %+v", out)
	}
}
