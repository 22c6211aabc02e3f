package localcluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestPauseHelperProcess is the process TestPause pauses: goroutines that each hold a thread of
// their own (blocked in read(2) on a pipe, which burns no CPU) until it is killed. Not a test of
// its own.
func TestPauseHelperProcess(t *testing.T) {
	if os.Getenv("LOCALCLUSTER_PAUSE_CHILD") != "1" {
		t.Skip("the process TestPause starts")
	}
	for range 4 {
		var p [2]int
		if err := syscall.Pipe(p[:]); err != nil {
			t.Fatal(err)
		}
		go func() {
			var b [1]byte
			_, _ = syscall.Read(p[0], b[:])
		}()
	}
	select {}
}

// TestPause: Pause returns only once every thread of a busy multi-threaded process is stopped,
// WaitStopped does not return while one runs, and says so when the process is gone; statState
// reads a command name with spaces and parentheses.
func TestPause(t *testing.T) {
	for stat, want := range map[string]byte{
		"12 (cellgate) S 1 12":   'S',
		"13 (a) T (b) t 1 13":    't',
		"14 (x)) R 1 14":         'R',
		"15 (kernel 1) T 1 15 0": 'T',
	} {
		if got, err := statState(stat); err != nil || got != want {
			t.Errorf("statState(%q) = %c, %v; want %c", stat, got, err, want)
		}
	}
	for _, stat := range []string{"", "12 cellgate S", "12 (cellgate)", "12 (cellgate) "} {
		if got, err := statState(stat); err == nil {
			t.Errorf("statState(%q) = %c, want an error", stat, got)
		}
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestPauseHelperProcess$")
	cmd.Env = append(os.Environ(), "LOCALCLUSTER_PAUSE_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	in := &Instance{ID: "child", Cmd: cmd}
	pid := cmd.Process.Pid
	threads := func() int {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
		if err != nil {
			t.Fatal(err)
		}
		return len(tasks)
	}
	deadline := time.Now().Add(time.Minute)
	for threads() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the child has %d threads, want at least 5", threads())
		}
		time.Sleep(10 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := WaitStopped(ctx, pid)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitStopped on a running process: %v, want it to wait until ctx ends", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := in.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", task.Name(), "stat"))
		if err != nil {
			t.Fatal(err)
		}
		if state, err := statState(string(stat)); err != nil || state != 'T' {
			t.Errorf("thread %s after Pause: state %c %v, want T", task.Name(), state, err)
		}
	}

	if err := in.Resume(); err != nil {
		t.Fatal(err)
	}
	// SIGCONT is asynchronous too: the threads leave state T soon, not at once.
	for {
		running, err := runningThread(pid)
		if err != nil {
			t.Fatal(err)
		}
		if running != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child still stopped after Resume")
		}
		time.Sleep(10 * time.Millisecond)
	}

	_ = cmd.Process.Kill()
	<-exited
	if err := WaitStopped(ctx, pid); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitStopped on a process gone: %v, want an error at once", err)
	}
}
