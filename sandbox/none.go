package sandbox

import (
	"context"
	"errors"
	"os"
	"os/exec"
)

// None starts kernels unisolated, as the gateway's own user. It is for
// development only: kernel code can do whatever the gateway can.
type None struct{}

// Name implements Launcher.
func (None) Name() string { return "none" }

// Launch implements Launcher.
func (None) Launch(_ context.Context, req Request) (*Process, error) {
	if len(req.Argv) == 0 {
		return nil, errors.New("launch kernel: empty command")
	}
	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Dir = req.WorkDir
	cmd.Env = append(os.Environ(), req.Env...)
	cmd.Stdout, cmd.Stderr = req.Output, req.Output
	return start(cmd, nil)
}
