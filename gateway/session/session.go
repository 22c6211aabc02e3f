// Package session is the core of a gateway session: one leased kernel, the
// clients attached to it, and everything between them that is not HTTP.
// It keeps the session's replay of kernel messages, routes each reply to
// the client that asked, counts executions, records them as permalinks,
// uploads the files they write, and ends the session when its lifetime
// says so. Transports (websocket, long-poll, /service) attach through
// Attach, Send and Replay; the permalink recorder, the file watcher and
// how file links are built are handed in.
//
// A session's life, in the order of this file: New, Start (pump and
// lifetime watcher), Send (a client's message in, execute bookkeeping),
// observe (a kernel's message out, into the replay), the lifetime
// watcher, End and cleanup.
package session

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/result"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// API is the API a session was started through; its rules (who may see
// it, how long it lives) follow from it.
type API string

// The APIs.
const (
	SageCell API = "sagecell"
	Jupyter  API = "jupyter"
	Service  API = "service"
)

// Transports a client attaches through, for metrics.
const (
	TransportWebsocket = "websocket"
	TransportPoll      = "poll"
	TransportSockJS    = "sockjs"
	TransportService   = "service"
)

// Reasons a session ends, as logged and told to clients.
const (
	EndIdle     = "idle timeout"
	EndLifespan = "maximum lifespan reached"
	EndOneShot  = "one-shot computation finished"
	EndDeleted  = "deleted by client"
	EndKernel   = "kernel died"
	EndShutdown = "server shutting down"
)

const (
	// FilesRequest is the user expression Sage-cell clients add to an
	// execute_request to learn the files it wrote; the gateway answers it.
	FilesRequest = "_sagecell_files"
	// FilesMsgType announces the files an execution wrote (iopub, parent =
	// the execute_request).
	FilesMsgType = "cellgate.files"
	// KernelTimeoutMsgType is how a Sage-cell kernel asks for an idle
	// timeout ({"timeout": seconds}, "inf" for the longest allowed), as the
	// Sage cell's reset_kernel_timeout sends it on iopub. The gateway takes
	// it in and does not relay it.
	KernelTimeoutMsgType = "kernel_timeout"
	// gatewayMsgPrefix marks the message types only the gateway may send.
	gatewayMsgPrefix = "cellgate."
	// maxRememberedClients bounds the clients whose cursor or presence a
	// session keeps: a client that invents an id per request must not
	// grow it without end.
	maxRememberedClients = 1024
)

// Lifetime is how long a session may live.
type Lifetime struct {
	// Idle ends the session after this long without client activity.
	Idle time.Duration
	// OneShot also ends it once it has computed, is idle and nobody is
	// attached (Sage-cell timeout=0).
	OneShot bool
	// MaxIdle caps the idle timeout the kernel asks for (kernel_timeout,
	// or an interact), which holds only while a client is attached.
	MaxIdle  time.Duration
	Lifespan time.Duration
}

// Config is what a session takes of the gateway's settings.
type Config struct {
	// ReplayMessages and ReplayBytes bound the replay.
	ReplayMessages int
	ReplayBytes    int
	// DetachGrace is how long a one-shot session that has computed
	// outlives its last client, so a client that drops can come back.
	DetachGrace time.Duration
	// MaxPendingExecutions bounds the executions waiting for their reply
	// whose permalink and files are tracked; later ones still run.
	MaxPendingExecutions int
	// UploadTimeout bounds the upload after one execution.
	UploadTimeout time.Duration
	// ReplyHold is how long an execute_reply waits for its permalink and
	// files; what lands later is announced when it does.
	ReplyHold time.Duration
}

// Permalinks records executions as permalinks (permalink.Recorder).
type Permalinks interface {
	Record(code, kernelName string, t permalink.Teller) *permalink.Pending
	Forget(t permalink.Teller)
}

// Results keeps what recorded executions showed (permalink.Recorder).
type Results interface {
	Keep(p *permalink.Pending, r result.Result)
	// ImagesApart reports whether large images are kept as files, apart
	// from a result's inline budget.
	ImagesApart() bool
}

// Options are what a session is started with.
type Options struct {
	API        API
	KernelName string
	// Language is the Sage-cell language the kernel runs this session's
	// code in ("gp" through the Sage kernel), "" for the kernel's own;
	// Wrap makes each execution's code that language's (nil: unchanged).
	// Permalinks keep the code as sent, under Language.
	Language string
	Wrap     func(code string) string
	// Remote is the client address it was started for, ClientKey the
	// client_id (both for the per-client caps).
	Remote    string
	ClientKey string
	Life      Lifetime
	Config    Config
	// Permalinks records executions; nil records none.
	Permalinks Permalinks
	// Results keeps each recorded execution's result, of at most
	// ResultBudget bytes inline; nil keeps none.
	Results      Results
	ResultBudget int
	// Files watches the kernel's working directory; nil uploads nothing.
	// The session closes it.
	Files Watcher
	// Link makes the link clients are given to an uploaded file.
	Link    func(id, name string) string
	Metrics *Metrics
	Log     zerolog.Logger
	// OnEnd runs once the session has ended (after clients are told).
	OnEnd func(*Session)
}

// Session is one leased kernel and the clients attached to it.
type Session struct {
	id      string
	kernel  *kernelpool.Kernel
	opts    Options
	created time.Time
	replay  *Replay
	log     zerolog.Logger
	metrics *Metrics
	uploads *uploader
	// capture follows what executions show, for their results; nil when
	// results are not kept.
	capture *result.Capture

	mu sync.Mutex
	// lastActive is the last client activity, or the kernel's last change
	// of state (the idle clock starts when its work ends); lastKernel is
	// its last message of any kind. Only the first extends the session.
	lastActive time.Time
	lastKernel time.Time
	detachedAt time.Time // when the last client dropped; zero if it left cleanly
	// kernelIdle is the idle timeout the kernel asked for (kernel_timeout),
	// if kernelAsked; see idleLimitLocked.
	kernelIdle  time.Duration
	kernelAsked bool
	clients     int
	byTransport map[string]int
	// executions counts the execute_requests taken in, for the end log.
	// It is not sentExecs: that one gives back a send the kernel refused.
	executions int
	// sentExecs and doneExecs count execute_requests relayed and those
	// whose idle status came: the kernel has work queued while they
	// differ, even when its last status says idle.
	sentExecs int
	doneExecs int
	state     string
	// kernelSession is the session id the kernel's own messages carry.
	kernelSession string
	pending       map[string]pendingExecution // by execute_request msg_id
	cursors       map[string]uint64           // where each client got to
	claims        map[string]*claim           // the live connection per client
	routes        routeTable
	presence      presence
	endReason     string

	// lastHeld is closed once the latest reply held for its permalink is
	// relayed; replies after it wait for it, so they keep their order.
	// Only the pump uses it.
	lastHeld    chan struct{}
	activity    chan struct{}
	ended       chan struct{}
	endOnce     sync.Once
	pumpStopped chan struct{}
	// stopped is closed once the kernel is shut down and reaped.
	stopped chan struct{}
}

// pendingExecution is what the gateway adds to an execution's reply.
type pendingExecution struct {
	wantsFiles bool
	permalink  *permalink.Pending
}

// New makes the session of a leased kernel; Start runs it.
func New(k *kernelpool.Kernel, o Options) *Session {
	now := time.Now()
	s := &Session{
		id: k.ID, kernel: k, opts: o, created: now, metrics: o.Metrics,
		replay:     newReplay(o.Config.ReplayMessages, o.Config.ReplayBytes),
		log:        o.Log.With().Str("session", k.ID).Str("kernel", o.KernelName).Logger(),
		lastActive: now, state: jupytermsg.StateIdle,
		byTransport: map[string]int{}, pending: map[string]pendingExecution{},
		activity: make(chan struct{}, 1), ended: make(chan struct{}),
		pumpStopped: make(chan struct{}), stopped: make(chan struct{}),
	}
	if o.Files != nil {
		s.uploads = newUploader(s)
	}
	if o.Results != nil && o.Permalinks != nil {
		s.capture = result.NewCapture(o.ResultBudget, o.Results.ImagesApart())
	}
	return s
}

// Start runs the session's goroutines.
func (s *Session) Start() {
	if s.uploads != nil {
		go s.uploads.run()
	}
	go s.pump()
	go s.watchLifetime()
	s.log.Info().Str("api", string(s.opts.API)).Str("remote", s.opts.Remote).Msg("session started")
}

// Discard releases a session that never started.
func (s *Session) Discard() {
	s.closeFiles()
	s.kernel.Shutdown()
	close(s.stopped)
}

// ID is the session's id, which is its kernel's.
func (s *Session) ID() string { return s.id }

// Kernel is the session's kernel.
func (s *Session) Kernel() *kernelpool.Kernel { return s.kernel }

// KernelName is the kernelspec it runs.
func (s *Session) KernelName() string { return s.opts.KernelName }

// Language is what the session's code is run as: the Sage-cell language
// it was asked for, or its kernel's name.
func (s *Session) Language() string { return cmp.Or(s.opts.Language, s.opts.KernelName) }

// API is the API it was started through.
func (s *Session) API() API { return s.opts.API }

// Remote and ClientKey are who it was started for.
func (s *Session) Remote() string    { return s.opts.Remote }
func (s *Session) ClientKey() string { return s.opts.ClientKey }

// Replay is the session's history of messages for clients.
func (s *Session) Replay() *Replay { return s.replay }

// Log is the session's logger.
func (s *Session) Log() *zerolog.Logger { return &s.log }

// clientMaySend reports whether clients may send msgType on ch (messaging
// spec 5.4, plus comms). Anything else would be dropped by the kernel
// without a word, so the client is told instead.
func clientMaySend(ch jupytermsg.Channel, msgType string) bool {
	switch ch {
	case jupytermsg.Shell:
		switch msgType {
		case "execute_request", "inspect_request", "complete_request", "history_request", "is_complete_request",
			"comm_info_request", "kernel_info_request", "comm_open", "comm_msg", "comm_close", "shutdown_request":
			return true
		}
	case jupytermsg.Control:
		switch msgType {
		case "shutdown_request", "interrupt_request", "debug_request", "kernel_info_request", "usage_request",
			"create_subshell_request", "delete_subshell_request", "list_subshell_request":
			return true
		}
	case jupytermsg.Stdin:
		return msgType == "input_reply"
	}
	return false
}

// ErrEnded is returned for messages sent to an ended session.
var ErrEnded = errors.New("session has ended")

// Send relays a client message to the kernel. client identifies the
// sending connection (a websocket's session_id, a poller's client): replies
// go back to it, and it fills a header that lacks a session.
func (s *Session) Send(client string, ch jupytermsg.Channel, m *jupytermsg.Message) error {
	select {
	case <-s.ended:
		return fmt.Errorf("%w: %s", ErrEnded, s.Reason())
	default:
	}
	if err := jupytermsg.FillHeader(m, client); err != nil {
		return fmt.Errorf("message header: %w", err)
	}
	if !clientMaySend(ch, m.Header.MsgType) {
		return fmt.Errorf("%s is not a request clients may send on the %s channel", m.Header.MsgType, ch)
	}
	execute := m.Header.MsgType == "execute_request" && ch == jupytermsg.Shell
	if execute {
		if err := s.prepareExecute(m); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.routes.put(m.Header.MsgID, client)
	if execute {
		s.sentExecs++
	}
	s.lastActive = time.Now()
	s.mu.Unlock()
	s.poke()
	s.metrics.Relayed.WithLabelValues("in", string(ch)).Inc()
	if err := s.kernel.Send(ch, m); err != nil {
		if execute {
			s.mu.Lock()
			s.sentExecs--
			s.mu.Unlock()
		}
		return fmt.Errorf("send to kernel: %w", err)
	}
	if s.capture != nil && ch == jupytermsg.Shell {
		// The page's side of widget state (older ipywidgets echo none of it).
		s.capture.Client(m.Header.MsgType, m.Content)
	}
	return nil
}

// prepareExecute counts the execution, starts recording its permalink,
// takes the snapshot its files are measured against, and takes out the
// Sage-cell files request, which the gateway answers itself.
func (s *Session) prepareExecute(m *jupytermsg.Message) error {
	var content map[string]json.RawMessage
	if err := json.Unmarshal(m.Content, &content); err != nil {
		return fmt.Errorf("execute_request content: %w", err)
	}
	if _, ok := content["code"]; !ok {
		return errors.New("execute_request without code")
	}
	s.mu.Lock()
	s.executions++
	s.mu.Unlock()
	s.metrics.Executions.WithLabelValues(string(s.opts.API)).Inc()
	var p pendingExecution
	rewrite := false
	// ipykernel needs "silent" and never replies to a request without it.
	if _, ok := content["silent"]; !ok {
		content["silent"] = json.RawMessage("false")
		rewrite = true
	}
	var exprs map[string]json.RawMessage
	if raw, ok := content["user_expressions"]; ok && json.Unmarshal(raw, &exprs) == nil {
		if _, asked := exprs[FilesRequest]; asked {
			delete(exprs, FilesRequest)
			content["user_expressions"], _ = json.Marshal(exprs)
			p.wantsFiles = true
			rewrite = true
		}
	}
	var code string
	_ = json.Unmarshal(content["code"], &code)
	if s.opts.Wrap != nil {
		content["code"], _ = json.Marshal(s.opts.Wrap(code))
		rewrite = true
	}
	if rewrite {
		raw, err := json.Marshal(content)
		if err != nil {
			return fmt.Errorf("execute_request content: %w", err)
		}
		m.Content = raw
	}
	var silent bool
	_ = json.Unmarshal(content["silent"], &silent)
	if s.opts.Permalinks == nil || silent {
		code = ""
	}
	if !p.wantsFiles && code == "" && s.opts.Files == nil {
		return nil
	}
	limit := s.opts.Config.MaxPendingExecutions
	s.mu.Lock()
	full := len(s.pending) >= limit
	if !full {
		if code != "" {
			p.permalink = s.opts.Permalinks.Record(code, cmp.Or(s.opts.Language, s.opts.KernelName), s)
			if s.capture != nil {
				recorded := p.permalink
				s.capture.Begin(m.Header.MsgID, code, func(r result.Result) { s.opts.Results.Keep(recorded, r) })
			}
		}
		s.pending[m.Header.MsgID] = p
	}
	s.mu.Unlock()
	if full {
		// The execution still runs; only what the gateway adds is lost,
		// and the client is told rather than left waiting for it.
		s.Notice(m.RawHeader, fmt.Sprintf("more than %d executions are waiting for their reply: this one's permalink and files are not recorded", limit))
		return nil
	}
	if s.opts.Files != nil && !s.opts.Files.BeforeExecution(m.Header.MsgID) {
		s.Notice(m.RawHeader, "too many executions are queued: the files this one writes are not uploaded")
	}
	return nil
}

// pump moves every kernel message into the replay. It never waits for
// clients or storage, so neither a slow client nor a slow database can
// stall the kernel or other clients.
func (s *Session) pump() {
	defer close(s.pumpStopped)
	for {
		select {
		case r := <-s.kernel.Messages():
			s.observe(r)
		case <-s.kernel.Done():
			// End waits for this loop to stop, so it cannot run here.
			s.metrics.Errors.WithLabelValues("kernel_died").Inc()
			reason := EndKernel
			if err := s.kernel.Err(); err != nil {
				reason += ": " + err.Error()
			}
			go s.End(reason)
			return
		case <-s.ended:
			return
		}
	}
}

// observe records one kernel message, updating the session's view of it.
func (s *Session) observe(r kernelpool.Received) {
	m := r.Msg
	msgType := m.Header.MsgType
	if strings.HasPrefix(msgType, gatewayMsgPrefix) {
		// Only the gateway speaks for itself: a kernel could otherwise
		// announce files (links) of its choosing.
		s.metrics.Errors.WithLabelValues("forged_message").Inc()
		s.log.Warn().Str("msg_type", msgType).Msg("dropped a kernel message posing as the gateway's")
		r.Release()
		return
	}
	if msgType == KernelTimeoutMsgType && s.opts.API != Jupyter {
		s.kernelTimeout(m)
		r.Release()
		return
	}
	s.tellDrops(r)
	s.metrics.Relayed.WithLabelValues("out", string(r.Channel)).Inc()
	// Most messages are iopub output, which needs nothing of the parent
	// header: it is parsed only for routing and the types that read it.
	var parent jupytermsg.Header
	if r.Channel != jupytermsg.IOPub || msgType == "status" || msgType == "execute_reply" || s.capture != nil && captured(msgType) {
		parent = m.Parent()
	}
	if s.capture != nil && r.Channel == jupytermsg.IOPub && captured(msgType) {
		s.capture.Kernel(msgType, parent.MsgID, m.Content)
	}
	var st jupytermsg.Status
	isStatus := msgType == "status" && m.DecodeContent(&st) == nil
	// Widget traffic: an interact is in use.
	interact := msgType == "comm_open" || msgType == "comm_msg"
	var p pendingExecution
	tracked := false
	s.mu.Lock()
	// What the kernel sends is not activity: only clients keep a session
	// alive (a computation is never idle meanwhile: its kernel is busy).
	// The idle clock starts again when the kernel's state changes, so it
	// runs from the end of the work.
	now := time.Now()
	s.lastKernel = now
	if isStatus {
		s.lastActive = now
	}
	if s.kernelSession == "" && m.Header.Session != "" {
		s.kernelSession = m.Header.Session
	}
	to := ""
	if r.Channel != jupytermsg.IOPub {
		// Replies go to the connection that asked; a client's header
		// session need not name it.
		if to = s.routes.get(parent.MsgID); to == "" {
			to = parent.Session
		}
	}
	switch {
	case isStatus:
		s.state = st.ExecutionState
		if st.ExecutionState == jupytermsg.StateIdle && parent.MsgType == "execute_request" && s.doneExecs < s.sentExecs {
			s.doneExecs++
		}
	case interact:
		// As the Sage cell's kernels ask when they make an interact
		// (kernel_timeout, inf): the longest idle timeout allowed, which
		// holds only while a client is attached (idleLimitLocked). An
		// interact nobody uses ends on the session's own timeout.
		s.kernelIdle, s.kernelAsked = s.opts.Life.MaxIdle, true
	case msgType == "execute_reply":
		p, tracked = s.pending[parent.MsgID]
		delete(s.pending, parent.MsgID)
	}
	s.mu.Unlock()
	if isStatus || interact {
		s.poke()
	}
	if tracked {
		// Files are uploaded off this goroutine; the uploader relays the
		// reply once they are stored or a short while has passed.
		if s.uploads != nil && s.uploads.hold(m, r.Charge, parent.MsgID, p, to) {
			return
		}
		s.relayReply(r.Channel, m, r.Charge, p, to)
		return
	}
	s.replay.AppendCharged(r.Channel, m, to, r.Charge)
}

// tellDrops tells clients, before the message that carries the count,
// that some of the kernel's messages were dropped on the way in.
func (s *Session) tellDrops(r kernelpool.Received) {
	if r.DroppedForBudget > 0 {
		s.Notice(r.Msg.ParentHeader, fmt.Sprintf("%d messages of output were dropped: the server holds as much kernel output as it may (kernel message budget)", r.DroppedForBudget))
	}
	if r.DroppedOversize > 0 {
		s.Notice(r.Msg.ParentHeader, fmt.Sprintf("%d messages from the kernel were dropped: each was over the server's per-message limit", r.DroppedOversize))
	}
}

// captured reports whether an iopub message is part of a result (a
// status ends an execution's).
func captured(msgType string) bool {
	switch msgType {
	case "stream", "display_data", "execute_result", "error", "clear_output", "update_display_data",
		"comm_open", "comm_msg", "comm_close", "status":
		return true
	}
	return false
}

// LastResult is the result of the session's last finished execution, if
// its code was code, with its widgets as the reader left them.
func (s *Session) LastResult(code string) (result.Result, bool) {
	if s.capture == nil {
		return result.Result{}, false
	}
	return s.capture.Last(code)
}

// kernelTimeout takes in a kernel_timeout message: the kernel asks for an
// idle timeout, capped at MaxIdle ("inf" is the cap); a negative one is
// ignored, as the Sage cell does.
func (s *Session) kernelTimeout(m *jupytermsg.Message) {
	d, ok := parseKernelTimeout(m.Content, s.opts.Life.MaxIdle)
	if !ok {
		s.log.Debug().RawJSON("content", m.Content).Msg("ignored a kernel_timeout without a timeout")
		return
	}
	s.mu.Lock()
	s.kernelIdle, s.kernelAsked = d, true
	s.mu.Unlock()
	s.poke()
}

// parseKernelTimeout reads the timeout of a kernel_timeout message's
// content: seconds as a number, or as the string a Python kernel makes of
// float("inf") ("inf"; also "Infinity"), capped at limit.
func parseKernelTimeout(content []byte, limit time.Duration) (time.Duration, bool) {
	var c struct {
		Timeout json.RawMessage `json:"timeout"`
	}
	if err := json.Unmarshal(content, &c); err != nil || len(c.Timeout) == 0 {
		return 0, false
	}
	var f float64
	if err := json.Unmarshal(c.Timeout, &f); err != nil {
		var text string
		if json.Unmarshal(c.Timeout, &text) != nil {
			return 0, false
		}
		if f, err = strconv.ParseFloat(strings.TrimSpace(text), 64); err != nil {
			return 0, false
		}
	}
	switch {
	case math.IsNaN(f) || f < 0:
		return 0, false
	case f >= limit.Seconds():
		return limit, true
	}
	return time.Duration(f * float64(time.Second)), true
}

// idleLimitLocked is how long the session may be idle now. The kernel may
// ask for a shorter timeout at any time, and for a longer one (up to
// MaxIdle) only while a client is attached: with nobody there, the session
// ends on the timeout it was started with.
func (s *Session) idleLimitLocked() time.Duration {
	if !s.kernelAsked {
		return s.opts.Life.Idle
	}
	if s.clients > 0 {
		return s.kernelIdle
	}
	return min(s.kernelIdle, s.opts.Life.Idle)
}

// IdleLimit is how long the session may be idle now.
func (s *Session) IdleLimit() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idleLimitLocked()
}

// relayReply relays a tracked execute_reply with its permalink. One whose
// permalink is still being recorded (the journal's fsync) waits for it, up
// to ReplyHold, off the pump; later replies wait behind it, so replies keep
// the order the kernel sent them in while other output flows meanwhile.
// Only the pump calls it.
func (s *Session) relayReply(ch jupytermsg.Channel, m *jupytermsg.Message, charge *kernelpool.Charge, p pendingExecution, to string) {
	prev := s.lastHeld
	if prev != nil {
		select {
		case <-prev:
			prev, s.lastHeld = nil, nil
		default:
		}
	}
	if id, ok := p.permalink.Recorded(); ok && prev == nil {
		s.replay.AppendCharged(ch, completeReply(m, id, p.wantsFiles, nil), to, charge)
		return
	}
	done := make(chan struct{})
	s.lastHeld = done
	go func() {
		defer close(done)
		// Measured from the reply, as if the pump had waited: waiting for
		// prev does not extend it.
		id := p.permalink.Wait(s.opts.Config.ReplyHold)
		if prev != nil {
			<-prev
		}
		s.replay.AppendCharged(ch, completeReply(m, id, p.wantsFiles, nil), to, charge)
	}()
}

// completeReply is an execute_reply as clients get it: with its permalink
// and, if the client asked, the names of the files the execution wrote, in
// the user expression and, as the Sage cell's replies have them, in
// payload[0].new_files.
func completeReply(m *jupytermsg.Message, permalinkID string, wantsFiles bool, names []string) *jupytermsg.Message {
	m = permalink.Annotate(m, permalinkID)
	if !wantsFiles {
		return m
	}
	var content map[string]json.RawMessage
	if json.Unmarshal(m.Content, &content) != nil {
		return m
	}
	var exprs map[string]json.RawMessage
	_ = json.Unmarshal(content["user_expressions"], &exprs)
	if exprs == nil {
		exprs = map[string]json.RawMessage{}
	}
	if names == nil {
		names = []string{}
	}
	// A Python-readable list of the names, as the Sage cell answers it.
	list, _ := json.Marshal(names)
	exprs[FilesRequest], _ = json.Marshal(map[string]any{"status": "ok", "data": map[string]string{"text/plain": string(list)}, "metadata": map[string]any{}})
	content["user_expressions"], _ = json.Marshal(exprs)
	var payload []json.RawMessage
	_ = json.Unmarshal(content["payload"], &payload)
	newFiles, _ := json.Marshal(map[string][]string{"new_files": names})
	content["payload"], _ = json.Marshal(append([]json.RawMessage{newFiles}, payload...))
	raw, err := json.Marshal(content)
	if err != nil {
		return m
	}
	completed := *m
	completed.Content = raw
	return &completed
}

// KernelSession is the session id the kernel's messages carry. Messages
// the gateway makes up carry it too: JupyterLab adopts the session of
// every message it gets and cancels its queued requests when it changes.
func (s *Session) KernelSession() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kernelSession != "" {
		return s.kernelSession
	}
	return s.kernel.Session
}

// GatewayMessage makes a message of the gateway's own, as if from the
// kernel.
func (s *Session) GatewayMessage(msgType string, parentHeader []byte, content any) (*jupytermsg.Message, error) {
	m, err := jupytermsg.New(msgType, s.KernelSession(), nil, content)
	if err != nil {
		return nil, fmt.Errorf("make %s: %w", msgType, err)
	}
	if len(parentHeader) > 0 {
		m.ParentHeader = parentHeader
	}
	return m, nil
}

// NoticeStream is the gateway's own word to a client, on stderr and
// marked as the gateway's so it is not taken for the kernel's output.
// Every notice, on every transport, has this one form.
func NoticeStream(text string) jupytermsg.Stream {
	return jupytermsg.Stream{Name: "stderr", Text: "[cellgate] " + text + "\n"}
}

// Notice tells the clients of the request with parentHeader (all clients
// if nil) something on stderr.
func (s *Session) Notice(parentHeader []byte, text string) {
	m, err := s.GatewayMessage("stream", parentHeader, NoticeStream(text))
	if err != nil {
		return
	}
	s.replay.Append(jupytermsg.IOPub, m, "")
}

// Touch records client activity, pushing back the idle deadline.
func (s *Session) Touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
	s.poke()
}

func (s *Session) poke() {
	select {
	case s.activity <- struct{}{}:
	default:
	}
}

// Attach registers a client; the returned func detaches it. A client that
// leaves on purpose (cleanly) lets a computed one-shot session end at
// once; one that dropped gets DetachGrace to come back.
func (s *Session) Attach(transport string) (detach func(clean bool)) {
	s.mu.Lock()
	s.clients++
	s.byTransport[transport]++
	s.mu.Unlock()
	s.Touch()
	var once sync.Once
	return func(clean bool) {
		once.Do(func() {
			s.mu.Lock()
			s.clients--
			s.byTransport[transport]--
			if s.clients == 0 {
				s.detachedAt = time.Now()
				if clean {
					s.detachedAt = time.Time{}
				}
			}
			s.mu.Unlock()
			s.Touch()
		})
	}
}

// Transports reports which transports have a client attached.
func (s *Session) Transports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for t, n := range s.byTransport {
		if n > 0 {
			out = append(out, t)
		}
	}
	return out
}

// Restarted forgets the work the old kernel process had queued.
func (s *Session) Restarted() {
	s.mu.Lock()
	s.doneExecs = s.sentExecs
	s.state = jupytermsg.StateIdle
	s.kernelSession = ""
	s.mu.Unlock()
	s.Touch()
}

// quietLocked reports whether the session counts as idle now: the kernel
// has nothing to do and, for the Jupyter API, nobody is connected. The
// idle timeout runs only while it is quiet.
func (s *Session) quietLocked() bool {
	if s.state != jupytermsg.StateIdle || s.doneExecs < s.sentExecs {
		return false
	}
	return s.opts.API != Jupyter || s.clients == 0
}

// watchLifetime ends the session on idle timeout, lifespan, or (one-shot)
// once it has computed and nobody is attached.
func (s *Session) watchLifetime() {
	lifespan := time.NewTimer(s.opts.Life.Lifespan)
	defer lifespan.Stop()
	check := time.NewTimer(time.Hour)
	defer check.Stop()
	for {
		s.mu.Lock()
		quiet := s.quietLocked()
		idleLeft := s.idleLimitLocked() - time.Since(s.lastActive)
		computed := s.opts.Life.OneShot && quiet && s.doneExecs > 0 && s.clients == 0
		graceLeft := s.opts.Config.DetachGrace - time.Since(s.detachedAt)
		s.mu.Unlock()
		switch {
		case computed && graceLeft <= 0:
			s.End(EndOneShot)
			return
		case quiet && idleLeft <= 0:
			s.End(EndIdle)
			return
		}
		wait := time.Hour
		if quiet {
			wait = max(idleLeft, 10*time.Millisecond)
		}
		if computed {
			wait = min(wait, max(graceLeft, 10*time.Millisecond))
		}
		check.Reset(wait)
		select {
		case <-s.ended:
			return
		case <-lifespan.C:
			s.End(EndLifespan)
			return
		case <-s.activity:
		case <-check.C:
		}
	}
}

// End stops the session for good: clients are told, the kernel is shut
// down (in the background), and OnEnd runs.
func (s *Session) End(reason string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.endReason = reason
		execs := s.executions
		s.mu.Unlock()
		close(s.ended)
		<-s.pumpStopped
		s.presence.stop(s)
		s.uploads.stop()
		if dead, err := s.GatewayMessage("status", nil, map[string]string{
			"execution_state": jupytermsg.StateDead, "reason": reason,
		}); err == nil {
			s.replay.Append(jupytermsg.IOPub, dead, "")
		}
		s.replay.close()
		if s.opts.Permalinks != nil {
			s.opts.Permalinks.Forget(s)
		}
		go s.cleanup()
		s.log.Info().Str("api", string(s.opts.API)).Str("remote", s.opts.Remote).Str("reason", reason).
			Dur("duration", time.Since(s.created)).Int("executions", execs).Msg("session ended")
		if s.opts.OnEnd != nil {
			s.opts.OnEnd(s)
		}
	})
}

// cleanup releases the kernel once the uploader is done with its
// directory: the watcher holds it open, and the sandbox must be able to
// unmount it.
func (s *Session) cleanup() {
	s.uploads.wait()
	s.closeFiles()
	s.kernel.Shutdown()
	close(s.stopped)
}

func (s *Session) closeFiles() {
	if s.opts.Files != nil {
		_ = s.opts.Files.Close()
	}
}

// Ended is closed once the session has ended.
func (s *Session) Ended() <-chan struct{} { return s.ended }

// Stopped is closed once its kernel is shut down and reaped.
func (s *Session) Stopped() <-chan struct{} { return s.stopped }

// Reason is why the session ended ("" while it runs).
func (s *Session) Reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endReason
}

// Snapshot is the session's state as the Jupyter kernel model shows it:
// its last activity is the client's or the kernel's, whichever is later.
func (s *Session) Snapshot() (state string, clients int, lastActive time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastKernel.After(s.lastActive) {
		return s.state, s.clients, s.lastKernel
	}
	return s.state, s.clients, s.lastActive
}

// RememberCursor keeps where a client got to, so it can resume.
func (s *Session) RememberCursor(client string, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cursors == nil {
		s.cursors = map[string]uint64{}
	}
	if _, known := s.cursors[client]; !known && len(s.cursors) >= maxRememberedClients {
		return
	}
	s.cursors[client] = seq
}

// Cursor is where a client got to, if it was here before.
func (s *Session) Cursor(client string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.cursors[client]
	return n, ok
}

// StartCursor is the sequence number after which a client starts: the
// one it reached last time, or the start (fromStart) or the end of the
// replay for a new client.
func (s *Session) StartCursor(client string, fromStart bool) uint64 {
	if n, ok := s.Cursor(client); ok {
		return n
	}
	if fromStart {
		return 0
	}
	return s.replay.Last()
}

// claim is one client's live connection.
type claim struct {
	kick func()
	done chan struct{}
}

// Claim makes the caller the live connection of client, as jupyter_server
// does on a reconnect with the same session_id: the previous one is told to
// go (kick) and waited for up to wait, so that it has saved where it got
// to. release ends the caller's turn.
func (s *Session) Claim(client string, kick func(), wait time.Duration) (release func()) {
	c := &claim{kick: kick, done: make(chan struct{})}
	s.mu.Lock()
	if s.claims == nil {
		s.claims = map[string]*claim{}
	}
	old := s.claims[client]
	s.claims[client] = c
	s.mu.Unlock()
	if old != nil {
		old.kick()
		t := time.NewTimer(wait)
		select {
		case <-old.done:
		case <-t.C:
		}
		t.Stop()
	}
	return func() {
		s.mu.Lock()
		if s.claims[client] == c {
			delete(s.claims, client)
		}
		s.mu.Unlock()
		close(c.done)
	}
}

// Claimed reports whether client has a live connection.
func (s *Session) Claimed(client string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claims[client] != nil
}

// KeepAttached counts client, which reaches the session by separate
// requests (long-polling), as attached until grace passes without another
// call, so a one-shot session does not end while it is between requests.
func (s *Session) KeepAttached(client string, grace time.Duration) {
	s.presence.mark(s, client, grace)
}
