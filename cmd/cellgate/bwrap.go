package main

import (
	"github.com/cellgate/cellgate/sandbox"
)

func newBwrapLauncher(o options) (sandbox.Launcher, error) {
	return sandbox.NewBwrap(o.sandboxConfig())
}
