package main

import (
	"github.com/cellgate/cellgate/sandbox"
)

func newBwrapLauncher(o options) (sandbox.Launcher, error) {
	cfg := sandbox.DefaultConfig()
	if o.kernelMemory > 0 {
		cfg.Memory = o.kernelMemory << 20
	}
	if o.kernelCPU > 0 {
		cfg.CPUTime = o.kernelCPU
	}
	if o.kernelDisk > 0 {
		cfg.Disk = o.kernelDisk << 20
	}
	if o.kernelProcs > 0 {
		cfg.Processes = o.kernelProcs
	}
	if o.kernelLifespan > 0 {
		cfg.Lifespan = o.kernelLifespan
	}
	return sandbox.NewBwrap(cfg)
}
