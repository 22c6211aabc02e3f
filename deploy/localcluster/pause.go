package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Pause stops the instance's process (SIGSTOP, as a long GC pause would; its kernels, in its
// process group, run on) and returns once every thread of it is stopped (WaitStopped): the stop
// takes effect asynchronously, and a thread of a multi-threaded process may still answer a
// request after kill(2) has returned. On an error the process may be stopped all the same:
// Resume it.
func (in *Instance) Pause(ctx context.Context) error {
	if err := in.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause %s: %w", in.ID, err)
	}
	if err := WaitStopped(ctx, in.Cmd.Process.Pid); err != nil {
		return fmt.Errorf("pause %s: %w", in.ID, err)
	}
	return nil
}

// Resume lets the process Pause stopped run again (SIGCONT).
func (in *Instance) Resume() error {
	return in.Cmd.Process.Signal(syscall.SIGCONT)
}

// WaitStopped waits until every thread of process pid is stopped (state T or t in
// /proc/pid/task/*/stat), ctx ends, or the process is gone.
func WaitStopped(ctx context.Context, pid int) error {
	for {
		running, err := runningThread(pid)
		if err != nil {
			return err
		}
		if running == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("process %d not stopped (%s): %w", pid, running, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// runningThread names a thread of process pid that is not stopped, with its state ("" if all
// are stopped); an error if the process is gone or a zombie.
func runningThread(pid int) (string, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("threads of process %d: %w", pid, err)
	}
	read := 0
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return "", err
		}
		read++
		state, err := statState(string(stat))
		if err != nil {
			return "", fmt.Errorf("thread %s of process %d: %w", task.Name(), pid, err)
		}
		switch state {
		case 'T', 't':
		case 'Z', 'X':
			return "", fmt.Errorf("process %d exited (thread %s in state %c)", pid, task.Name(), state)
		default:
			return fmt.Sprintf("thread %s in state %c", task.Name(), state), nil
		}
	}
	if read == 0 {
		return "", fmt.Errorf("process %d has no threads left", pid)
	}
	return "", nil
}

// statState is the state field of a /proc stat line: "pid (comm) S ...", where comm may hold
// spaces and parentheses itself.
func statState(stat string) (byte, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) || stat[i+1] != ' ' {
		return 0, fmt.Errorf("unexpected stat %q", stat)
	}
	return stat[i+2], nil
}
