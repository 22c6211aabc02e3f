package main

import (
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/sandbox"
)

// newBwrapLauncher makes the bwrap sandbox, its fork templates' failures
// and recoveries told to log (kernels then start cold; /readyz says so
// too, as kernel_starts).
func newBwrapLauncher(o options, log zerolog.Logger) (sandbox.Launcher, error) {
	cfg := o.sandboxConfig()
	cfg.OnForkState = func(failure error) {
		if failure != nil {
			log.Warn().Err(failure).Msg("kernel fork templates failing: kernels start cold until a fork works again")
			return
		}
		log.Info().Msg("kernels fork from templates again")
	}
	return sandbox.NewBwrap(cfg)
}
