package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
)

// Request describes one kernel process to start.
type Request struct {
	// Argv is the kernel command, with the connection file already substituted.
	Argv []string
	// Env is the kernel's environment beyond what the launcher provides.
	Env []string
	// WorkDir is the kernel's private, writable working directory.
	WorkDir string
	// RuntimeDir holds the connection file and the ipc sockets; it is shared
	// with the gateway and nothing else.
	RuntimeDir string
	// Output receives the kernel's stdout and stderr (may be nil).
	Output io.Writer
}

// Launcher starts kernel processes.
type Launcher interface {
	Launch(ctx context.Context, req Request) (*Process, error)
	// Name is the mode shown to operators ("bwrap", "none").
	Name() string
}

// Process is a started kernel: the leader of its own process group.
type Process struct {
	// pid leads the kernel's process group: the exec'd command, or (a
	// forked kernel) the kernel itself.
	pid  int
	done chan struct{}
	err  error

	// The fields below are set by the launcher before Launch returns the
	// Process and never change afterwards.

	// signalGroup is the process group Signal reaches; 0 means the leader's
	// own group. bwrap needs another one: see Bwrap.
	signalGroup int
	// killGroups are the groups Kill reaches; nil means the leader's group.
	killGroups []int
	// adopter is a forked kernel's pid 1, which adopts the kernel's
	// orphans (0 for a cold kernel, whose pid 1 is below pid).
	adopter int
	// explain turns the leader's exit status into a clearer error.
	explain func(error) error
	// release undoes what the launcher set up for this process; Close runs
	// it once, after the process is done.
	release func() error

	closeOnce sync.Once
	closeErr  error

	// limitMu guards limit: why the tree accountant (treelimit.go) ended
	// the kernel, nil unless it did.
	limitMu sync.Mutex
	limit   error
}

// start runs cmd as the leader of a new process group and reaps it. onExit
// (may be nil) runs after the leader is reaped and before Done is closed,
// so that whatever it cleans up is clean by the time anyone sees Done.
func start(cmd *exec.Cmd, onExit func()) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kernel %s: %w", cmd.Path, err)
	}
	p := &Process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		if onExit != nil {
			onExit()
		}
		close(p.done)
	}()
	return p, nil
}

// Pid is the process group leader's pid (also the group id). Under bwrap
// this is the outer bwrap process, not the kernel; for a forked kernel, the
// template's child that holds the kernel's namespaces.
func (p *Process) Pid() int { return p.pid }

// Signal sends sig to the kernel's whole process group: the one the kernel
// and its children run in (for bwrap, the session inside the sandbox).
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return ErrExited
	default:
	}
	group := p.signalGroup
	if group == 0 {
		group = p.Pid()
	}
	if err := syscall.Kill(-group, sig); err != nil {
		return fmt.Errorf("signal %v to kernel group %d: %w", sig, group, err)
	}
	return nil
}

// Kill sends SIGKILL to the whole group; it also reaches processes that
// outlived the leader. Under bwrap it ends the whole sandbox, including
// processes that left the group (setsid, double fork), and does nothing
// once Done is closed.
func (p *Process) Kill() {
	if p.killGroups != nil && isDone(p) {
		// Nothing of a finished sandbox runs, and its group ids may
		// already be another kernel's.
		return
	}
	if p.killGroups == nil {
		_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
		return
	}
	for _, g := range p.killGroups {
		_ = syscall.Kill(-g, syscall.SIGKILL)
	}
}

// Done is closed once the leader has exited and been reaped (under bwrap:
// once nothing of the sandbox runs any more).
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the leader's exit status, valid after Done is closed. Under bwrap,
// errors.Is(err, ErrCPULimit), errors.Is(err, ErrMemoryLimit) and
// errors.Is(err, ErrLifespan) tell which limit ended the kernel.
func (p *Process) Err() error {
	err := p.err
	if p.explain != nil {
		err = p.explain(err)
	}
	p.limitMu.Lock()
	limit := p.limit
	p.limitMu.Unlock()
	if limit != nil {
		err = fmt.Errorf("%w: %w", limit, err)
	}
	return err
}

// endFor kills the kernel because of limit, which Err reports first.
func (p *Process) endFor(limit error) {
	p.limitMu.Lock()
	if p.limit == nil {
		p.limit = limit
	}
	p.limitMu.Unlock()
	p.Kill()
}

// Close kills the process if it still runs, waits for it, and releases what
// the launcher set up for it (under bwrap: the size-limited file systems
// mounted over WorkDir and RuntimeDir, and the kernel's uid). Call it after
// the last read of WorkDir and before removing WorkDir and RuntimeDir.
// Close is idempotent.
func (p *Process) Close() error {
	p.closeOnce.Do(func() {
		p.Kill()
		<-p.done
		if p.release != nil {
			p.closeErr = p.release()
		}
	})
	return p.closeErr
}

// isDone tells whether Done is closed.
func isDone(p *Process) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ErrExited is returned when signalling a process that has already exited.
var ErrExited = errors.New("kernel process has exited")
