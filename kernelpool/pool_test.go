package kernelpool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

func installedSpecs(t testing.TB) map[string]jupytermsg.Spec {
	t.Helper()
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	if _, ok := specs["python3"]; !ok {
		t.Fatal("no python3 kernelspec installed: run make deps")
	}
	return specs
}

// shortTempDir keeps ipc socket paths under the 107-byte limit.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "cgk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testKernelConfig(t testing.TB) KernelConfig {
	root := shortTempDir(t)
	return KernelConfig{
		Launcher:          sandbox.None{},
		RuntimeRoot:       filepath.Join(root, "run"),
		WorkRoot:          filepath.Join(root, "work"),
		HeartbeatInterval: 300 * time.Millisecond,
		ShutdownGrace:     time.Second,
		Log:               zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	}
}

func newTestPool(t testing.TB, ready map[string]int, max int) *Pool {
	t.Helper()
	p, err := New(Config{Specs: installedSpecs(t), Ready: ready, MaxKernels: max, Kernel: testKernelConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return p
}

func lease(t testing.TB, p *Pool, name string) *Kernel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	k, err := p.Lease(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type outputs struct {
	stdout, result, ename string
}

func run(t testing.TB, k *Kernel, code string) (outputs, *jupytermsg.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out outputs
	reply, err := Execute(ctx, k, code, func(r Received) {
		switch r.Msg.Header.MsgType {
		case "stream":
			var s jupytermsg.Stream
			_ = r.Msg.DecodeContent(&s)
			out.stdout += s.Text
		case "execute_result":
			var d jupytermsg.DisplayData
			_ = r.Msg.DecodeContent(&d)
			out.result = strings.Trim(string(d.Data["text/plain"]), `"`)
		case "error":
			var e jupytermsg.Error
			_ = r.Msg.DecodeContent(&e)
			out.ename = e.EName
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, reply
}

func TestLeaseExecute(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 4)
	k := lease(t, p, "python3")
	defer k.Shutdown()
	out, reply := run(t, k, "print('hello'); 1+1")
	if out.stdout != "hello\n" || out.result != "2" {
		t.Errorf("outputs = %+v", out)
	}
	var r jupytermsg.ExecuteReply
	if err := reply.DecodeContent(&r); err != nil || r.Status != "ok" {
		t.Errorf("reply = %s (%v)", reply.Content, err)
	}
	cwd, _ := run(t, k, "import os; print(os.getcwd())")
	if strings.TrimSpace(cwd.stdout) != k.WorkDir {
		t.Errorf("kernel cwd %q, want its work dir %q", cwd.stdout, k.WorkDir)
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

func TestLeasedKernelIsNeverHandedOutAgain(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 6)
	seen := map[string]bool{}
	var kernels []*Kernel
	for range 4 {
		k := lease(t, p, "python3")
		if seen[k.ID] {
			t.Fatalf("kernel %s leased twice", k.ID)
		}
		seen[k.ID] = true
		kernels = append(kernels, k)
	}
	for _, k := range kernels {
		k.Shutdown()
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

func processExists(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}

// readyKernel waits for a ready kernel in the pool other than not.
func readyKernel(t *testing.T, p *Pool, name string, not *Kernel) *Kernel {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		sp := p.specs[name]
		if len(sp.ready) > 0 && sp.ready[0] != not {
			k := sp.ready[0]
			p.mu.Unlock()
			return k
		}
		p.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("pool never became ready")
	return nil
}

func TestKilledKernelIsDeclaredDeadAndReplaced(t *testing.T) {
	cases := map[string]func(pid int){
		"kill -9":           func(pid int) { syscall.Kill(-pid, syscall.SIGKILL) },
		"stopped (no beat)": func(pid int) { syscall.Kill(-pid, syscall.SIGSTOP) },
	}
	for name, attack := range cases {
		t.Run(name, func(t *testing.T) {
			p := newTestPool(t, map[string]int{"python3": 1}, 2)
			victim := readyKernel(t, p, "python3", nil)
			pid := victim.Pid()
			attack(pid)
			select {
			case <-victim.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("dead kernel not noticed")
			}
			if !errors.Is(victim.Err(), ErrKernelDied) {
				t.Errorf("Err = %v, want ErrKernelDied", victim.Err())
			}
			readyKernel(t, p, "python3", victim)
			p.mu.Lock()
			for _, k := range p.specs["python3"].ready {
				if k == victim {
					t.Error("dead kernel still in the pool")
				}
			}
			p.mu.Unlock()
			waitGone(t, pid)
			// Done closes when death is noticed; the reaping that
			// removes the directories follows it.
			select {
			case <-victim.cleaned:
			case <-time.After(30 * time.Second):
				t.Fatal("dead kernel never reaped")
			}
			if _, err := os.Stat(victim.WorkDir); !os.IsNotExist(err) {
				t.Errorf("work dir of dead kernel left behind: %v", err)
			}
		})
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; processExists(pid); i++ {
		if i > 100 {
			t.Fatalf("process %d still exists", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLeaseWaitsThenFailsClearly(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 1}, 1)
	k := lease(t, p, "python3")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := p.Lease(ctx, "python3")
	if !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "1 of 1 kernels in use") {
		t.Fatalf("lease at capacity: %v", err)
	}
	// Freeing the only slot lets a waiting lease through.
	got := make(chan *Kernel)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		k2, err := p.Lease(ctx, "python3")
		if err != nil {
			t.Error(err)
		}
		got <- k2
	}()
	time.Sleep(100 * time.Millisecond)
	k.Shutdown()
	if k2 := <-got; k2 != nil {
		if k2.ID == k.ID {
			t.Error("used kernel returned to the pool")
		}
		k2.Shutdown()
	}
	if _, err := p.Lease(context.Background(), "cobol"); !errors.Is(err, ErrUnknownKernel) {
		t.Errorf("unknown spec: %v", err)
	}
}

func TestBrokenKernelFailsWithItsOutput(t *testing.T) {
	specs := map[string]jupytermsg.Spec{"broken": {Name: "broken", KernelSpec: jupytermsg.KernelSpec{
		Argv: []string{"/bin/sh", "-c", "echo no such module >&2; exit 3"}}}}
	p, err := New(Config{Specs: specs, Ready: map[string]int{"broken": 1}, MaxKernels: 2, Kernel: testKernelConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = p.Lease(ctx, "broken")
	if !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "no such module") {
		t.Fatalf("lease of a broken kernel: %v", err)
	}
}

func TestFiftyLeasesLeaveNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 50 kernels")
	}
	p := newTestPool(t, map[string]int{"python3": 2}, 4)
	cfg := p.cfg.Kernel
	var pids []int
	for range 50 {
		k := lease(t, p, "python3")
		pids = append(pids, k.Pid())
		k.Shutdown()
	}
	for _, pid := range pids {
		waitGone(t, pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{cfg.RuntimeRoot, cfg.WorkRoot} {
		if left, _ := os.ReadDir(root); len(left) != 0 {
			t.Errorf("%s holds %d leftover entries", root, len(left))
		}
	}
	if zombies := zombieChildren(); len(zombies) > 0 {
		t.Errorf("zombie children: %v", zombies)
	}
}

// zombieChildren lists this process's children in state Z.
func zombieChildren() []string {
	return children(func(state string) bool { return state == "Z" })
}

// children lists this process's children whose state (R, S, Z, ...) is
// wanted.
func children(wanted func(state string) bool) []string {
	entries, _ := os.ReadDir("/proc")
	self := strconv.Itoa(os.Getpid())
	var found []string
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
		fields := strings.Fields(rest)
		if len(fields) > 1 && fields[1] == self && wanted(fields[0]) {
			found = append(found, e.Name())
		}
	}
	return found
}

func TestSageKernel(t *testing.T) {
	if _, ok := installedSpecs(t)["sagemath"]; !ok {
		t.Fatal("sagemath kernelspec missing: make deps installs sagemath-jupyter")
	}
	if testing.Short() {
		t.Skip("sage starts slowly")
	}
	p := newTestPool(t, map[string]int{"sagemath": 1}, 2)
	k := lease(t, p, "sagemath")
	defer k.Shutdown()
	out, _ := run(t, k, "factor(2^64-1)")
	if out.result != "3 * 5 * 17 * 257 * 641 * 65537 * 6700417" {
		t.Errorf("sage result %+v", out)
	}
}

func TestConcurrentLeases(t *testing.T) {
	p := newTestPool(t, map[string]int{"python3": 2}, 4)
	var wg sync.WaitGroup
	ids := make(chan string, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := lease(t, p, "python3")
			ids <- k.ID
			if out, _ := run(t, k, "1+1"); out.result != "2" {
				t.Errorf("got %+v", out)
			}
			k.Shutdown()
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatal("a kernel went to two leases")
		}
		seen[id] = true
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
