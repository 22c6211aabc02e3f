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

	"github.com/cellgate/cellgate/jupytermsg"
)

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

// The warm-up a new kernel gets leaves nothing a reader could see: the
// first cell is execution 1, with no earlier result or history.
func TestWarmupLeavesNoTrace(t *testing.T) {
	specs := installedSpecs(t)
	ready := map[string]int{"python3": 1}
	if _, ok := specs["sagemath"]; ok {
		ready["sagemath"] = 1
	}
	p := newTestPool(t, ready, 4)
	for name := range ready {
		k := lease(t, p, name)
		out, reply := run(t, k, "print(repr(_), len(Out), len(In))")
		var r jupytermsg.ExecuteReply
		if err := reply.DecodeContent(&r); err != nil || r.Status != "ok" || r.ExecutionCount != 1 {
			t.Errorf("%s: first reply %s (%v), want ok with execution_count 1", name, reply.Content, err)
		}
		// In holds a blank entry 0 and this cell.
		if out.stdout != "'' 0 2\n" {
			t.Errorf("%s: after warm-up _, len(Out), len(In) = %q, want '' 0 2", name, out.stdout)
		}
		// The display hook still works: results reach _ and nothing of the
		// warm-up's result is left under its own name.
		run(t, k, "40+2")
		if out, _ := run(t, k, "print(repr(_), [n for n in ('_0', '_1', '_2') if n in globals()])"); out.stdout != "42 ['_2']\n" {
			t.Errorf("%s: after warm-up and 40+2, _ and the _N names are %q, want 42 ['_2']", name, out.stdout)
		}
		k.Shutdown()
	}
	if got := DefaultWarmup(jupytermsg.Spec{KernelSpec: jupytermsg.KernelSpec{Language: "julia"}}); got != nil {
		t.Errorf("a kernel of another language is warmed with %q", got)
	}
}

func TestInterrupt(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 2)
	k := lease(t, p, "python3")
	defer k.Shutdown()
	go func() {
		time.Sleep(time.Second)
		if err := k.Interrupt(); err != nil {
			t.Error(err)
		}
	}()
	out, _ := run(t, k, "while True: pass")
	if out.ename != "KeyboardInterrupt" {
		t.Errorf("after interrupt: %+v", out)
	}
	if out := runAfterError(t, k, "1+1"); out.result != "2" {
		t.Errorf("kernel unusable after interrupt: %+v", out)
	}
}

// runAfterError runs code right after an execution that failed: with
// stop_on_error, ipykernel aborts the requests that reach it before it has
// cleared the queue, so an "aborted" reply is retried.
func runAfterError(t *testing.T, k *Kernel, code string) outputs {
	t.Helper()
	for range 20 {
		out, reply := run(t, k, code)
		var r jupytermsg.ExecuteReply
		if err := reply.DecodeContent(&r); err != nil || r.Status != "aborted" {
			return out
		}
	}
	t.Fatal("every execution aborted")
	return outputs{}
}

func TestRestartKeepsIDAndClearsState(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 2)
	k := lease(t, p, "python3")
	defer k.Shutdown()
	run(t, k, "x = 41")
	oldPid := k.Pid()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := k.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if k.Pid() == oldPid || processExists(oldPid) {
		t.Errorf("old process %d still there after restart", oldPid)
	}
	if out, _ := run(t, k, "'x' in globals()"); out.result != "False" {
		t.Errorf("state survived restart: %+v", out)
	}
	if k.Err() != nil {
		t.Errorf("restart declared the kernel dead: %v", k.Err())
	}
}

// TestInputRightAfterStart asks for input the moment a kernel is handed
// out: the kernel drops input_request to a stdin peer it has not seen yet,
// so a kernel must not count as ready before its stdin is connected.
func TestInputRightAfterStart(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 4)
	for range 4 {
		k := lease(t, p, "python3")
		req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: "input('name? ')", AllowStdin: true, UserExpressions: map[string]string{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Send(jupytermsg.Shell, req); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(30 * time.Second)
	wait:
		for {
			select {
			case r := <-k.Messages():
				if r.Channel == jupytermsg.Stdin && r.Msg.Header.MsgType == "input_request" {
					break wait
				}
			case <-timeout:
				t.Fatal("input_request never arrived")
			}
		}
		k.Shutdown()
	}
}
