// Package kernelpool launches Jupyter kernels, keeps them healthy and hands
// out ready ones from a prewarmed pool.
package kernelpool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	zmq "github.com/pebbe/zmq4"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/sandbox"
)

// Errors a caller can test for.
var (
	ErrKernelGone  = errors.New("kernel is shut down")
	ErrKernelDied  = errors.New("kernel died")
	ErrStartFailed = errors.New("kernel failed to start")
	// ErrKernelBusy means a message was not sent: the kernel is not
	// reading (stopped, hung, flooded), or its Messages are not being
	// read. The kernel may recover; the message is gone.
	ErrKernelBusy = errors.New("kernel is not taking messages")
)

// KernelConfig is what starting one kernel needs. Start from
// DefaultKernelConfig; a field left zero takes its default too.
type KernelConfig struct {
	Spec     jupytermsg.Spec
	Launcher sandbox.Launcher
	// RuntimeRoot holds one private directory per kernel (connection file,
	// ipc sockets). Keep it short: ipc paths are limited to 107 bytes.
	RuntimeRoot string
	// WorkRoot holds one working directory per kernel.
	WorkRoot          string
	StartTimeout      time.Duration
	HeartbeatInterval time.Duration
	HeartbeatMisses   int
	// ShutdownGrace is how long each step of shutdown (request, SIGTERM)
	// waits before the next, harsher one.
	ShutdownGrace time.Duration
	// MaxMessageBytes caps one message from the kernel, all its frames
	// together; a kernel that sends more loses that message (counted, and
	// its clients told) rather than growing the gateway's memory.
	MaxMessageBytes int64
	// MessageBudget, shared by every kernel of the process, bounds the
	// bytes of kernel messages held in Go at once: from the receiving loop
	// to whoever lets the message go (the Messages channel, a session's
	// replay, the transports' copies until written to their clients).
	// Once it is full, iopub messages are dropped, replies wait, and a
	// transport skips a client whose copy finds no room. nil: no
	// process-wide bound.
	MessageBudget *MessageBudget
	// ReceiveHWM is how many messages each of the kernel's four message
	// sockets queues in libzmq (C memory, outside MessageBudget) before
	// libzmq stops reading from the kernel: at most 4*ReceiveHWM messages
	// of MaxMessageBytes per kernel. iopub's queue drains at once (what does
	// not fit the budget is dropped); the replies' queues fill only while
	// the budget is full or the consumer does not read. The rest waits in
	// the kernel's own process, under its sandbox's memory limit, or is
	// dropped there (iopub). Without a MessageBudget, what one kernel can
	// make the gateway hold in Go as well is bounded only by
	// (4*ReceiveHWM + outBuffer + 6) * MaxMessageBytes, 54 messages.
	ReceiveHWM int
	// SendTimeout bounds Send: a kernel that does not take a message in
	// this time gets ErrKernelBusy instead of holding the caller.
	SendTimeout time.Duration
	// Warmup gives the code run through a new kernel before it counts as
	// ready; nil means DefaultWarmup, and a func returning nil runs none.
	Warmup func(jupytermsg.Spec) []string
	Log    zerolog.Logger
}

// DefaultWarmup warms IPython-based kernels (python, sage): a kernel's
// first displayed result costs it about twice a later one (formatters and
// the display hook load on first use), which a reader would otherwise
// wait for on the first cell. One step, one round trip: it calls the
// display hook as a cell's last expression would (which formats the result
// and publishes it), then IPython's own reset of the output cache (what
// %reset out runs: Out, _N and the hook's _, __, ___; resetting them by
// hand would stop the hook from updating _ for good). It runs without
// history, so the execution count stays at zero. A forked python3 kernel
// was ready 20 to 30 ms sooner than with the two steps ("1+1", then the
// reset) it replaced, its first cell as fast (about 10 ms).
func DefaultWarmup(spec jupytermsg.Spec) []string {
	switch spec.Language {
	case "python", "sage":
		return []string{
			"try:\n    get_ipython().displayhook(1+1)\n    get_ipython().displayhook.flush()\nexcept Exception:\n    pass",
		}
	}
	return nil
}

// DefaultKernelConfig is what starting a kernel uses when nothing is said:
// the one place each of these defaults lives. Spec, Launcher and the
// directories have none; the caller must give them.
func DefaultKernelConfig() KernelConfig {
	return KernelConfig{
		StartTimeout:      60 * time.Second,
		HeartbeatInterval: 2 * time.Second,
		HeartbeatMisses:   3,
		ShutdownGrace:     2 * time.Second,
		MaxMessageBytes:   DefaultMaxMessageBytes,
		ReceiveHWM:        8,
		SendTimeout:       5 * time.Second,
		Warmup:            DefaultWarmup,
	}
}

// applyDefaults fills every field left zero (or negative: none of these
// means anything below zero) from DefaultKernelConfig.
func (c *KernelConfig) applyDefaults() {
	d := DefaultKernelConfig()
	orDefault(&c.StartTimeout, d.StartTimeout)
	orDefault(&c.HeartbeatInterval, d.HeartbeatInterval)
	orDefault(&c.HeartbeatMisses, d.HeartbeatMisses)
	orDefault(&c.ShutdownGrace, d.ShutdownGrace)
	orDefault(&c.MaxMessageBytes, d.MaxMessageBytes)
	orDefault(&c.ReceiveHWM, d.ReceiveHWM)
	orDefault(&c.SendTimeout, d.SendTimeout)
	if c.Warmup == nil {
		c.Warmup = d.Warmup
	}
}

func orDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// DefaultMaxMessageBytes is the one default cap on a Jupyter message, in
// either direction: the gateway applies it to clients, the pool to kernels.
// 8 MiB holds the largest single outputs in common use: plotly's offline
// notebook output embeds plotly.min.js (about 3.5 MB) in one display_data, and a
// high-resolution PNG plot is 1-3 MiB as base64; 4 MiB would refuse the
// first. A data frame's HTML is a few KiB (pandas shows 60 rows).
const DefaultMaxMessageBytes = 8 << 20

// maxIPCPath is the length limit of a unix socket path (sun_path, 108 with NUL).
const maxIPCPath = 107

// ErrIPCPathTooLong is wrapped by StartKernel's error when RuntimeRoot is
// too long for unix socket paths.
var ErrIPCPathTooLong = errors.New("ipc socket path too long")

// Kernel is one running kernel process and its ZMQ connection.
type Kernel struct {
	ID      string
	Spec    jupytermsg.Spec
	WorkDir string
	// Session is the session id (and ZMQ identity) the gateway's own
	// messages carry.
	Session string

	cfg        KernelConfig
	zctx       *zmq.Context
	runtimeDir string
	out        chan Received
	output     *tailBuffer

	mu         sync.Mutex
	proc       *sandbox.Process
	socks      *sockets
	restarts   int
	restarting bool

	done      chan struct{}
	deathOnce sync.Once
	death     error
	cleaned   chan struct{}
}

// StartKernel launches a kernel and returns once it answers kernel_info.
func StartKernel(ctx context.Context, zctx *zmq.Context, cfg KernelConfig) (*Kernel, error) {
	cfg.applyDefaults()
	id := uuid.NewString()
	k := &Kernel{
		ID: id, Spec: cfg.Spec, Session: uuid.NewString(),
		cfg: cfg, zctx: zctx,
		runtimeDir: filepath.Join(cfg.RuntimeRoot, id),
		WorkDir:    filepath.Join(cfg.WorkRoot, id),
		out:        make(chan Received, outBuffer),
		output:     newTailBuffer(8 << 10),
		done:       make(chan struct{}),
		cleaned:    make(chan struct{}),
	}
	// Sockets are named /s<launch>-<n>: len("/sock-5") leaves room for
	// 999 launches (restarts) of one kernel.
	if n := len(k.runtimeDir) + len("/sock-5"); n > maxIPCPath {
		return nil, fmt.Errorf("%w: %w: runtime dir %s gives %d bytes, over %d", ErrStartFailed, ErrIPCPathTooLong, cfg.RuntimeRoot, n, maxIPCPath)
	}
	for _, d := range []string{k.runtimeDir, k.WorkDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			k.removeDirs()
			return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
		}
	}
	if err := k.launch(ctx); err != nil {
		k.removeDirs()
		return nil, err
	}
	go k.watch(k.process())
	return k, nil
}

func (k *Kernel) process() *sandbox.Process {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.proc
}

// launch starts a process with a fresh key and connects to it. It is used
// for the first start and for restarts.
func (k *Kernel) launch(ctx context.Context) error {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("%w: key: %w", ErrStartFailed, err)
	}
	k.mu.Lock()
	k.restarts++
	gen := k.restarts
	k.mu.Unlock()
	// A restart binds new socket files, so the kernel never races its
	// predecessor's half-closed sockets.
	conn := jupytermsg.IPCConnection(filepath.Join(k.runtimeDir, fmt.Sprintf("s%d", gen)), hex.EncodeToString(key))
	conn.KernelName = k.Spec.Name
	// StartKernel checked the first generation; restarts make names longer.
	if n := len(conn.Endpoint(jupytermsg.Heartbeat)) - len("ipc://"); n > maxIPCPath {
		return fmt.Errorf("%w: %w: %d bytes, over %d", ErrStartFailed, ErrIPCPathTooLong, n, maxIPCPath)
	}
	connFile := filepath.Join(k.runtimeDir, "kernel.json")
	if err := conn.WriteFile(connFile); err != nil {
		return fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	env := make([]string, 0, len(k.Spec.Env)+1)
	for name, value := range k.Spec.Env {
		env = append(env, name+"="+value)
	}
	proc, err := k.cfg.Launcher.Launch(ctx, sandbox.Request{
		Argv: k.Spec.Command(connFile), Env: env,
		WorkDir: k.WorkDir, RuntimeDir: k.runtimeDir, Output: k.output,
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	startup := make(chan Received, 64)
	socks := &sockets{
		zctx: k.zctx, conn: conn, signer: jupytermsg.NewSigner(conn.Key),
		identity: k.Session, inproc: fmt.Sprintf("inproc://kernel-%s-%d", k.ID, gen), maxMsg: k.cfg.MaxMessageBytes,
		rcvHWM: k.cfg.ReceiveHWM, sendTimeout: k.cfg.SendTimeout,
		budget: k.cfg.MessageBudget, budgetDrops: dropReports{burst: 1},
		out: startup, discard: k.done,
		onError: func(err error) {
			k.cfg.Log.Warn().Err(err).Str("kernel", k.ID).Msg("kernel channel")
		},
	}
	socks.onFlood = func(err error) {
		k.mu.Lock()
		current := k.socks == socks
		k.mu.Unlock()
		if current {
			go k.die(err)
		}
	}
	hb := heartbeatConfig{
		interval: k.cfg.HeartbeatInterval, timeout: k.cfg.HeartbeatInterval, misses: k.cfg.HeartbeatMisses,
		onDead: func(err error) {
			// A restart silences the old process on purpose.
			k.mu.Lock()
			current := k.socks == socks && !k.restarting
			k.mu.Unlock()
			if current {
				go k.die(err)
			}
		},
	}
	if err := socks.open(); err != nil {
		_ = proc.Close()
		return fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	k.mu.Lock()
	k.proc, k.socks = proc, socks
	k.mu.Unlock()

	// Readiness and warm-up share one StartTimeout.
	readyCtx, cancelReady := context.WithTimeout(ctx, k.cfg.StartTimeout)
	err = k.waitReady(readyCtx, proc, socks, startup)
	if err == nil {
		err = k.warmUp(readyCtx, proc, socks, startup)
	}
	cancelReady()
	if err != nil {
		socks.close()
		_ = proc.Close()
		return err
	}
	socks.setOut(k.out)
	socks.startHeartbeat(hb)
	select {
	case <-k.done:
		// Shut down while restarting: die already stopped the old process.
		k.stopProcess(proc, socks)
		_ = proc.Close()
		return k.death
	default:
	}
	return nil
}

// waitReady repeats kernel_info_request until both its reply and the
// iopub idle status it caused arrive: the SUB socket joins late, and a
// kernel is only useful once its output can be seen. Waiting for the idle
// of the last attempt (not just any iopub message) means every message
// that the readiness probes caused has arrived before the kernel is handed
// on, so none of them leaks into a session.
func (k *Kernel) waitReady(ctx context.Context, proc *sandbox.Process, socks *sockets, startup <-chan Received) error {
	// How long to wait for the idle status once the reply is in. The idle
	// comes a millisecond after the reply unless iopub joined too late to
	// see it (the slow joiner): then the round is lost, and waiting long
	// for it only delays the next. Doubling each lost round keeps a loaded
	// machine, whose idle may come late, from losing every round.
	idleWithin := 50 * time.Millisecond
	for {
		req, err := jupytermsg.New("kernel_info_request", k.Session, nil, nil)
		if err != nil {
			return err
		}
		if err := socks.send(jupytermsg.Shell, req); err != nil {
			return fmt.Errorf("%w: %w", ErrStartFailed, err)
		}
		reply, idle, err := awaitReplyAndIdle(ctx, startup, proc.Done(), req.Header.MsgID, time.Second, idleWithin, nil)
		switch {
		case errors.Is(err, errProcessEnded):
			return fmt.Errorf("%w: %s exited (%v): %s", ErrStartFailed, k.Spec.Name, proc.Err(), k.output.String())
		case err != nil:
			return fmt.Errorf("%w: %s not ready: %w; output: %s", ErrStartFailed, k.Spec.Name, err, k.output.String())
		case reply == nil || !idle:
			// A round lost to the slow joiner: ask again.
			idleWithin = min(2*idleWithin, time.Second)
			continue
		}
		select {
		case <-socks.stdinReady:
			return nil
		case <-socks.stdinFailed:
			return fmt.Errorf("%w: %s: %w", ErrStartFailed, k.Spec.Name, socks.stdinErr)
		case <-proc.Done():
			return fmt.Errorf("%w: %s exited (%v): %s", ErrStartFailed, k.Spec.Name, proc.Err(), k.output.String())
		case <-ctx.Done():
			return fmt.Errorf("%w: %s stdin channel not connected: %w", ErrStartFailed, k.Spec.Name, ctx.Err())
		}
	}
}

// watch declares the kernel dead when proc exits unexpectedly.
func (k *Kernel) watch(proc *sandbox.Process) {
	select {
	case <-k.done:
	case <-proc.Done():
		k.processExited(proc)
	}
}

// processExited handles the exit of proc. A process that Restart is
// stopping, or has already replaced, ended on purpose. The identity check
// is what matters: this may run after Restart has finished and cleared
// restarting, and must not kill the new process then.
func (k *Kernel) processExited(proc *sandbox.Process) {
	k.mu.Lock()
	current := k.proc == proc && !k.restarting
	k.mu.Unlock()
	if !current {
		return
	}
	cause := proc.Err()
	if cause == nil {
		cause = errors.New("exit status 0")
	}
	k.die(fmt.Errorf("%w: process exited: %w", ErrKernelDied, cause))
}

// Messages delivers everything the kernel sends on shell, control, stdin
// and iopub. It has one consumer: whoever leased the kernel. A consumer
// that stops reading holds the kernel back on shell, control and stdin
// (the kernel queues its replies, and Send starts failing with
// ErrKernelBusy), but not on iopub: a PUB socket never waits, so once the
// small queues fill, the kernel drops iopub messages, the status: idle
// that ends a request among them. With a MessageBudget, each message
// comes charged: the consumer releases it (Received.Release) once it lets
// the message go, and what is left unread when the kernel dies is released
// here.
func (k *Kernel) Messages() <-chan Received { return k.out }

// Send signs m with the kernel's key and sends it on channel ch. It waits
// at most SendTimeout; ErrKernelBusy means the message was not sent.
func (k *Kernel) Send(ch jupytermsg.Channel, m *jupytermsg.Message) error {
	if !ch.Valid() || ch == jupytermsg.IOPub {
		return fmt.Errorf("cannot send on channel %q", ch)
	}
	select {
	case <-k.done:
		return k.Err()
	default:
	}
	k.mu.Lock()
	socks := k.socks
	k.mu.Unlock()
	return socks.send(ch, m)
}

// Done is closed when the kernel is dead or shut down; Err says why.
func (k *Kernel) Done() <-chan struct{} { return k.done }

// Err is the reason the kernel ended, nil while it runs.
func (k *Kernel) Err() error {
	select {
	case <-k.done:
		return k.death
	default:
		return nil
	}
}

// Pid is the kernel process group id.
func (k *Kernel) Pid() int { return k.process().Pid() }

// Interrupt interrupts the running execution, by message or by SIGINT as
// the kernelspec asks.
func (k *Kernel) Interrupt() error {
	if k.Spec.InterruptByMessage() {
		m, err := jupytermsg.New("interrupt_request", k.Session, nil, nil)
		if err != nil {
			return err
		}
		return k.Send(jupytermsg.Control, m)
	}
	return k.process().Signal(syscall.SIGINT)
}

// Restart replaces the kernel process with a fresh one, keeping the id,
// the working directory and the Messages channel.
func (k *Kernel) Restart(ctx context.Context) error {
	select {
	case <-k.done:
		return k.Err()
	default:
	}
	k.mu.Lock()
	if k.restarting {
		k.mu.Unlock()
		return errors.New("kernel is already restarting")
	}
	k.restarting = true
	proc, socks := k.proc, k.socks
	k.mu.Unlock()
	k.stopProcess(proc, socks)
	err := k.launch(ctx)
	k.mu.Lock()
	k.restarting = false
	k.mu.Unlock()
	if err != nil {
		k.die(err)
		return err
	}
	go k.watch(k.process())
	return nil
}

// Shutdown ends the kernel: shutdown_request, then SIGTERM, then SIGKILL
// of the whole group, and removes its directories. It is idempotent and
// returns once everything is gone.
func (k *Kernel) Shutdown() {
	k.die(ErrKernelGone)
	<-k.cleaned
}

// die records the first reason the kernel ended and tears it down.
func (k *Kernel) die(reason error) {
	k.deathOnce.Do(func() {
		k.death = reason
		k.mu.Lock()
		proc, socks := k.proc, k.socks
		k.mu.Unlock()
		close(k.done)
		k.stopProcess(proc, socks)
		// The launcher's mounts over the kernel's directories must go
		// before the directories can.
		if err := proc.Close(); err != nil {
			k.cfg.Log.Error().Err(err).Str("kernel", k.ID).Msg("release kernel sandbox")
		}
		k.removeDirs()
		close(k.cleaned)
		if !errors.Is(reason, ErrKernelGone) {
			k.cfg.Log.Warn().Err(reason).Str("kernel", k.ID).Str("spec", k.Spec.Name).Msg("kernel ended")
		}
	})
}

// stopProcess asks politely, then insists. The request is only queued:
// whether or not the kernel ever reads it, the signals follow on time.
func (k *Kernel) stopProcess(proc *sandbox.Process, socks *sockets) {
	select {
	case <-proc.Done():
	default:
		if m, err := jupytermsg.New("shutdown_request", k.Session, nil, jupytermsg.ShutdownRequest{}); err == nil {
			_ = socks.sendNoWait(jupytermsg.Control, m)
		}
		if !waitDone(proc, k.cfg.ShutdownGrace) {
			_ = proc.Signal(syscall.SIGTERM)
			if !waitDone(proc, k.cfg.ShutdownGrace) {
				proc.Kill()
				<-proc.Done()
			}
		}
	}
	// Children that outlived the leader are in the same group.
	proc.Kill()
	socks.close()
}

func waitDone(proc *sandbox.Process, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-proc.Done():
		return true
	case <-t.C:
		return false
	}
}

func (k *Kernel) removeDirs() {
	for _, d := range []string{k.runtimeDir, k.WorkDir} {
		if err := os.RemoveAll(d); err != nil {
			k.cfg.Log.Error().Err(err).Str("dir", d).Msg("remove kernel directory")
		}
	}
}

// Output returns the tail of what the kernel process printed.
func (k *Kernel) Output() string { return k.output.String() }

func isIdle(m *jupytermsg.Message) bool {
	var st jupytermsg.Status
	return m.DecodeContent(&st) == nil && st.ExecutionState == jupytermsg.StateIdle
}

// warmUp runs the spec's warm-up code, each step to its idle status, so
// nothing it caused reaches whoever leases the kernel. A step that fails
// in the kernel is only logged: warm-up is an optimisation.
func (k *Kernel) warmUp(ctx context.Context, proc *sandbox.Process, socks *sockets, startup <-chan Received) error {
	for _, code := range k.cfg.Warmup(k.Spec) {
		req, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{
			Code: code, UserExpressions: map[string]string{},
		})
		if err != nil {
			return err
		}
		if err := socks.send(jupytermsg.Shell, req); err != nil {
			return fmt.Errorf("%w: warm-up: %w", ErrStartFailed, err)
		}
		// The idle comes on iopub, which may drop it: once the reply is
		// in, a missing idle ends the wait soon, not at StartTimeout.
		reply, idle, err := awaitReplyAndIdle(ctx, startup, proc.Done(), req.Header.MsgID, 0, time.Second, nil)
		switch {
		case errors.Is(err, errProcessEnded):
			return fmt.Errorf("%w: %s exited during warm-up (%v): %s", ErrStartFailed, k.Spec.Name, proc.Err(), k.output.String())
		case err != nil:
			return fmt.Errorf("%w: %s warm-up: %w", ErrStartFailed, k.Spec.Name, err)
		case !idle:
			k.cfg.Log.Warn().Str("kernel", k.ID).Str("spec", k.Spec.Name).Msg("kernel warm-up: no idle status after the reply; going on")
		}
		var content jupytermsg.ExecuteReply
		if reply.DecodeContent(&content) == nil && content.Status != "ok" {
			k.cfg.Log.Warn().Str("kernel", k.ID).Str("spec", k.Spec.Name).Str("status", content.Status).Msg("kernel warm-up step failed")
		}
	}
	return nil
}

// errProcessEnded is awaitReplyAndIdle's error when ended closes first.
var errProcessEnded = errors.New("kernel ended")

// awaitReplyAndIdle reads in until both the shell or control reply to
// request msgID and the iopub idle status it caused have arrived (they come
// on different sockets, in either order), passing each message of that
// request to onMessage (may be nil). replyWithin bounds the wait for the
// reply and idleWithin the wait for the idle once the reply is in (0: only
// ctx bounds them); when one runs out it returns what it has, with no
// error. Messages of other requests are discarded.
func awaitReplyAndIdle(ctx context.Context, in <-chan Received, ended <-chan struct{}, msgID string, replyWithin, idleWithin time.Duration, onMessage func(Received)) (reply *jupytermsg.Message, idle bool, err error) {
	var timeout <-chan time.Time // nil: never
	var timer *time.Timer
	arm := func(d time.Duration) {
		if timer != nil {
			timer.Stop()
		}
		timer, timeout = nil, nil
		if d > 0 {
			timer = time.NewTimer(d)
			timeout = timer.C
		}
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	arm(replyWithin)
	for reply == nil || !idle {
		select {
		case r := <-in:
			// Nothing here holds a message after reading it (the reply
			// is decoded and dropped by the caller).
			r.Release()
			if r.Msg.ParentMsgID() != msgID {
				continue
			}
			if onMessage != nil {
				onMessage(r)
			}
			switch {
			case r.Channel == jupytermsg.IOPub:
				if r.Msg.Header.MsgType == "status" && isIdle(r.Msg) {
					idle = true
				}
			case strings.HasSuffix(r.Msg.Header.MsgType, "_reply"):
				reply = r.Msg
				if !idle {
					arm(idleWithin)
				}
			}
		case <-timeout:
			return reply, idle, nil
		case <-ended:
			return reply, idle, errProcessEnded
		case <-ctx.Done():
			return reply, idle, ctx.Err()
		}
	}
	return reply, idle, nil
}
