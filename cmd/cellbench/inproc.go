package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	zmq "github.com/pebbe/zmq4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
)

// inproc starts kernels in this process through kernelpool, as cellgate
// does, to time what the gateway is compared against: a kernel's cold
// start with and without the sandbox, and execute over ZMQ directly.
type inproc struct {
	zctx  *zmq.Context
	spec  jupytermsg.Spec
	bwrap sandbox.Launcher
	root  string
}

func newInproc(dir string) (*inproc, error) {
	specs, _ := jupytermsg.FindKernelSpecs(jupytermsg.KernelSpecDirs(os.Getenv))
	spec, ok := specs["python3"]
	if !ok {
		return nil, fmt.Errorf("python3 kernelspec not installed (make deps)")
	}
	zctx, err := kernelpool.NewZMQContext(0)
	if err != nil {
		return nil, err
	}
	zctx.SetRetryAfterEINTR(true)
	// The cold-start rows measure cold starts: forked ones are
	// BenchmarkSandboxedStart's.
	scfg := sandbox.DefaultConfig()
	scfg.Fork = false
	bw, err := sandbox.NewBwrap(scfg)
	if err != nil {
		_ = zctx.Term()
		return nil, err
	}
	for _, d := range []string{filepath.Join(dir, "r"), filepath.Join(dir, "w")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			_ = zctx.Term()
			return nil, err
		}
	}
	return &inproc{zctx: zctx, spec: spec, bwrap: bw, root: dir}, nil
}

func (p *inproc) start(ctx context.Context, l sandbox.Launcher) (*kernelpool.Kernel, time.Duration, error) {
	cfg := kernelpool.KernelConfig{
		Spec: p.spec, Launcher: l, Log: zerolog.Nop(),
		RuntimeRoot: filepath.Join(p.root, "r"), WorkRoot: filepath.Join(p.root, "w"),
	}
	began := time.Now()
	k, err := kernelpool.StartKernel(ctx, p.zctx, cfg)
	return k, time.Since(began), err
}

// coldStarts starts and stops n kernels with each launcher, alternating,
// and returns the start-to-ready times by launcher name. On each sandboxed
// kernel it also times the first execution: alone (quiet), or while
// another kernel starts (busy): what a refill started at once after a lease
// would cost it (the pool holds the refill back for RefillDelay while
// another kernel is ready, or starts it at once when none is). stops are the times Shutdown took (shutdown_request
// until the process is reaped and its sandbox and directories are gone).
func (p *inproc) coldStarts(ctx context.Context, n int) (starts, stops map[string][]time.Duration, quiet, busy []time.Duration, err error) {
	starts, stops = map[string][]time.Duration{}, map[string][]time.Duration{}
	launchers := []sandbox.Launcher{sandbox.None{}, p.bwrap}
	for i := 0; i < n; i++ {
		for j := range launchers {
			l := launchers[(i+j)%len(launchers)]
			k, took, err := p.start(ctx, l)
			if err != nil {
				return starts, stops, quiet, busy, fmt.Errorf("%s kernel: %w", l.Name(), err)
			}
			starts[l.Name()] = append(starts[l.Name()], took)
			if l == p.bwrap {
				var other chan error
				if i%2 == 1 {
					other = make(chan error, 1)
					go func() {
						k2, _, err := p.start(ctx, p.bwrap)
						if err == nil {
							k2.Shutdown()
						}
						other <- err
					}()
					time.Sleep(20 * time.Millisecond) // the replacement is under way
				}
				d, err := zmqClient{k}.execute(ctx)
				if other != nil {
					if oerr := <-other; oerr != nil && err == nil {
						err = oerr
					}
				}
				if err != nil {
					k.Shutdown()
					return starts, stops, quiet, busy, err
				}
				if other != nil {
					busy = append(busy, d)
				} else {
					quiet = append(quiet, d)
				}
			}
			began := time.Now()
			k.Shutdown()
			stops[l.Name()] = append(stops[l.Name()], time.Since(began))
		}
	}
	return starts, stops, quiet, busy, nil
}

func (p *inproc) close() {
	_ = p.zctx.Term()
}

// zmqClient runs executions on an in-process kernel over ZMQ, the floor
// the gateway's transports are compared against.
type zmqClient struct{ k *kernelpool.Kernel }

func (z zmqClient) execute(ctx context.Context) (time.Duration, error) {
	began := time.Now()
	reply, err := kernelpool.Execute(ctx, z.k, "1+1", nil)
	took := time.Since(began)
	if err != nil {
		return took, err
	}
	var c jupytermsg.ExecuteReply
	if err := reply.DecodeContent(&c); err != nil || c.Status != "ok" {
		return took, fmt.Errorf("direct execute: reply %s", reply.Content)
	}
	return took, nil
}
