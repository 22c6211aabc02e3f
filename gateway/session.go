package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
)

// Why a session ended, as logged and told to clients.
const (
	endIdle      = "idle timeout"
	endLifespan  = "maximum lifespan reached"
	endOneShot   = "one-shot computation finished"
	endDeleted   = "deleted by client"
	endKernel    = "kernel died"
	endShutdown  = "server shutting down"
	sageCellAPI  = "sagecell"
	jupyterAPI   = "jupyter"
	serviceAPI   = "service"
	filesRequest = "_sagecell_files"

	maxRememberedClients = 1024
	gatewayMsgPrefix     = "cellgate."
	// maxRoutes bounds the requests whose sender a session remembers, so
	// that a client sending without end cannot grow it.
	maxRoutes = 4096
)

// Transports a client attaches through, for metrics.
const (
	transportWebsocket = "websocket"
	transportPoll      = "poll"
	transportService   = "service"
)

// lifetime is how long a session may live.
type lifetime struct {
	// idle ends the session after this long without activity.
	idle time.Duration
	// oneShot also ends it once it has computed, is idle and nobody is
	// attached (Sage-cell timeout=0).
	oneShot  bool
	maxIdle  time.Duration // cap for extensions by interacts
	lifespan time.Duration
}

// session is one leased kernel and the clients attached to it.
type session struct {
	id      string
	kernel  *kernelpool.Kernel
	spec    string
	api     string
	remote  string
	owner   string // the client key it was created for (per-client caps)
	created time.Time
	log     *replayLog
	logger  zerolog.Logger
	life    lifetime
	cfg     *Config
	metrics *Metrics

	mu          sync.Mutex
	lastActive  time.Time
	detachedAt  time.Time // when the last client dropped; zero if it left cleanly
	idleFor     time.Duration
	clients     int
	byTransport map[string]int
	// executions counts the execute_requests taken in, for the end log.
	// It is not sentExecs: that one gives back a send the kernel refused.
	executions int
	// sentExecs and doneExecs count execute_requests relayed and those
	// whose idle status came: the kernel has work queued while they
	// differ, even when its last status says idle.
	sentExecs  int
	doneExecs  int
	state      string
	kernelSess string                      // the session id the kernel's own messages carry
	pending    map[string]pendingExecution // by execute_request msg_id
	permalinks []string                    // ids handed out, to report drops
	cursors    map[string]uint64           // where each client session got to
	conns      map[string]*clientConn      // the live websocket per client session
	routes     routeTable
	polls      pollPresence
	files      *executionFiles
	uploads    *uploader
	// permalink records an execution's code; "" when not stored.
	permalink func(s *session, code string) string
	// lastHeld is closed once the latest reply held for its permalink is
	// relayed; replies after it wait for it, so they keep their order.
	// Only the pump uses it.
	lastHeld    chan struct{}
	onEnd       []func(*session)
	activity    chan struct{}
	ended       chan struct{}
	endReason   string
	endOnce     sync.Once
	pumpStopped chan struct{}
	// stopped is closed once the kernel is shut down and reaped.
	stopped chan struct{}
}

func newSession(k *kernelpool.Kernel, spec, api, remote, owner string, life lifetime, cfg *Config, m *Metrics) *session {
	now := time.Now()
	s := &session{
		id: k.ID, kernel: k, spec: spec, api: api, remote: remote, owner: owner, created: now,
		log:    newReplayLog(cfg.ReplayMessages, cfg.ReplayBytes),
		logger: cfg.Log.With().Str("session", k.ID).Str("kernel", spec).Logger(),
		life:   life, cfg: cfg, metrics: m, lastActive: now, idleFor: life.idle, state: jupytermsg.StateIdle,
		byTransport: map[string]int{},
		pending:     map[string]pendingExecution{}, activity: make(chan struct{}, 1),
		ended: make(chan struct{}), pumpStopped: make(chan struct{}), stopped: make(chan struct{}),
	}
	return s
}

// start runs the session's goroutines, once its hooks are set.
func (s *session) start() {
	if s.files != nil {
		s.uploads = newUploader(s)
		go s.uploads.run()
	}
	go s.pump()
	go s.watchLifetime()
}

// discard releases a session that never started.
func (s *session) discard() {
	s.files.close()
	s.kernel.Shutdown()
	close(s.stopped)
}

// pendingExecution is what the gateway adds to an execution's reply.
type pendingExecution struct {
	wantsFiles bool
	permalink  *permalinkFuture
}

// permalinkFuture is a permalink being recorded while its execution runs.
// Recording makes it durable (the queue's journal is fsynced), which must
// not delay the code; only the reply that tells the client the id waits
// for it, so a client is never told an id that could still be lost.
type permalinkFuture struct {
	done chan struct{}
	id   string
}

func recordPermalink(record func() string) *permalinkFuture {
	f := &permalinkFuture{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.id = record()
	}()
	return f
}

// recorded reports whether recording is over (or there is no permalink),
// and the id if so.
func (f *permalinkFuture) recorded() (string, bool) {
	if f == nil {
		return "", true
	}
	select {
	case <-f.done:
		return f.id, true
	default:
		return "", false
	}
}

// wait returns the id once recorded, or "" if recording takes longer than
// d (the reply then goes without it) or there is no permalink.
func (f *permalinkFuture) wait(d time.Duration) string {
	if id, ok := f.recorded(); ok {
		return id
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-f.done:
		return f.id
	case <-t.C:
		return ""
	}
}

// pump moves every kernel message into the replay log. It never waits for
// clients or storage, so neither a slow client nor a slow database can
// stall the kernel or other clients.
func (s *session) pump() {
	defer close(s.pumpStopped)
	for {
		select {
		case r := <-s.kernel.Messages():
			s.observe(r)
		case <-s.kernel.Done():
			// end waits for this loop to stop, so it cannot run here.
			s.metrics.errors.WithLabelValues("kernel_died").Inc()
			reason := endKernel
			if err := s.kernel.Err(); err != nil {
				reason += ": " + err.Error()
			}
			go s.end(reason)
			return
		case <-s.ended:
			return
		}
	}
}

// observe records one kernel message, updating the session's view of it.
func (s *session) observe(r kernelpool.Received) {
	m := r.Msg
	msgType := m.Header.MsgType
	if strings.HasPrefix(msgType, gatewayMsgPrefix) {
		// Only the gateway speaks for itself: a kernel could otherwise
		// announce files (links) of its choosing.
		s.metrics.errors.WithLabelValues("forged_message").Inc()
		s.logger.Warn().Str("msg_type", msgType).Msg("dropped a kernel message posing as the gateway's")
		return
	}
	s.metrics.relayed.WithLabelValues("out", string(r.Channel)).Inc()
	// Most messages are iopub output, which needs nothing of the parent
	// header: it is parsed only for routing and the types that read it.
	var parent jupytermsg.Header
	if r.Channel != jupytermsg.IOPub || msgType == "status" || msgType == "execute_reply" {
		parent = m.Parent()
	}
	var st jupytermsg.Status
	isStatus := msgType == "status" && m.DecodeContent(&st) == nil
	// An interact is in use: keep the session alive up to the cap.
	interact := msgType == "comm_open" || msgType == "comm_msg"
	var p pendingExecution
	tracked := false
	s.mu.Lock()
	// Kernel output is activity: a computation that prints is not idle.
	s.lastActive = time.Now()
	if s.kernelSess == "" && m.Header.Session != "" {
		s.kernelSess = m.Header.Session
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
		s.idleFor = max(s.idleFor, s.life.maxIdle)
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
		if s.uploads != nil && s.uploads.hold(m, parent.MsgID, p, to) {
			return
		}
		s.relayReply(r.Channel, m, p, to)
		return
	}
	s.log.append(r.Channel, m, to)
}

// relayReply relays a tracked execute_reply with its permalink. One whose
// permalink is still being recorded (the journal's fsync) waits for it, up
// to ReplyHold, off the pump; later replies wait behind it, so replies keep
// the order the kernel sent them in while other output flows meanwhile.
// Only the pump calls it.
func (s *session) relayReply(ch jupytermsg.Channel, m *jupytermsg.Message, p pendingExecution, to string) {
	prev := s.lastHeld
	if prev != nil {
		select {
		case <-prev:
			prev, s.lastHeld = nil, nil
		default:
		}
	}
	if id, ok := p.permalink.recorded(); ok && prev == nil {
		s.log.append(ch, rewriteReply(m, id, p.wantsFiles, nil), to)
		return
	}
	done := make(chan struct{})
	s.lastHeld = done
	go func() {
		defer close(done)
		// Measured from the reply, as if the pump had waited: waiting for
		// prev does not extend it.
		id := p.permalink.wait(s.cfg.Storage.ReplyHold)
		if prev != nil {
			<-prev
		}
		s.log.append(ch, rewriteReply(m, id, p.wantsFiles, nil), to)
	}()
}

// kernelSession is the session id the kernel's messages carry. Messages
// the gateway makes up carry it too: JupyterLab adopts the session of
// every message it gets and cancels its queued requests when it changes.
func (s *session) kernelSession() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kernelSess != "" {
		return s.kernelSess
	}
	return s.kernel.Session
}

// gatewayMessage makes a message of the gateway's own, as if from the kernel.
func (s *session) gatewayMessage(msgType string, parentHeader []byte, content any) (*jupytermsg.Message, error) {
	m, err := jupytermsg.New(msgType, s.kernelSession(), nil, content)
	if err != nil {
		return nil, fmt.Errorf("make %s: %w", msgType, err)
	}
	if len(parentHeader) > 0 {
		m.ParentHeader = parentHeader
	}
	return m, nil
}

// noticeStream is the gateway's own word to a client, on stderr and marked
// as the gateway's so it is not taken for the kernel's output.
func noticeStream(text string) jupytermsg.Stream {
	return jupytermsg.Stream{Name: "stderr", Text: "[cellgate] " + text + "\n"}
}

// notice tells the clients of the request with parentHeader something on
// stderr.
func (s *session) notice(parentHeader []byte, text string) {
	m, err := s.gatewayMessage("stream", parentHeader, noticeStream(text))
	if err != nil {
		return
	}
	s.log.append(jupytermsg.IOPub, m, "")
}

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

// errSessionEnded is returned for messages sent to an ended session.
var errSessionEnded = errors.New("session has ended")

// send relays a client message to the kernel. client identifies the
// sending connection (its session_id, or the poller's client): replies go
// back to it, and it fills a header that lacks a session.
func (s *session) send(client string, ch jupytermsg.Channel, m *jupytermsg.Message) error {
	select {
	case <-s.ended:
		return fmt.Errorf("%w: %s", errSessionEnded, s.reason())
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
	s.metrics.relayed.WithLabelValues("in", string(ch)).Inc()
	if err := s.kernel.Send(ch, m); err != nil {
		if execute {
			s.mu.Lock()
			s.sentExecs--
			s.mu.Unlock()
		}
		return fmt.Errorf("send to kernel: %w", err)
	}
	return nil
}

// prepareExecute counts the execution, records its permalink and the
// files before it, and takes out the Sage-cell files request, which the
// gateway answers itself.
func (s *session) prepareExecute(m *jupytermsg.Message) error {
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
	s.metrics.executions.WithLabelValues(s.api).Inc()
	var p pendingExecution
	rewrite := false
	// ipykernel needs "silent" and never replies to a request without it.
	if _, ok := content["silent"]; !ok {
		content["silent"] = json.RawMessage("false")
		rewrite = true
	}
	var exprs map[string]json.RawMessage
	if raw, ok := content["user_expressions"]; ok && json.Unmarshal(raw, &exprs) == nil {
		if _, asked := exprs[filesRequest]; asked {
			delete(exprs, filesRequest)
			content["user_expressions"], _ = json.Marshal(exprs)
			p.wantsFiles = true
			rewrite = true
		}
	}
	if rewrite {
		raw, err := json.Marshal(content)
		if err != nil {
			return fmt.Errorf("execute_request content: %w", err)
		}
		m.Content = raw
	}
	var code string
	if s.permalink != nil {
		_ = json.Unmarshal(content["code"], &code)
		var silent bool
		_ = json.Unmarshal(content["silent"], &silent)
		if silent {
			code = ""
		}
	}
	if !p.wantsFiles && code == "" && s.files == nil {
		return nil
	}
	s.mu.Lock()
	full := len(s.pending) >= s.cfg.MaxPendingExecutions
	if !full {
		if code != "" {
			p.permalink = recordPermalink(func() string {
				id := s.permalink(s, code)
				if id != "" {
					s.mu.Lock()
					if len(s.permalinks) < s.cfg.MaxPendingExecutions {
						s.permalinks = append(s.permalinks, id)
					}
					s.mu.Unlock()
				}
				return id
			})
		}
		s.pending[m.Header.MsgID] = p
	}
	s.mu.Unlock()
	if full {
		// The execution still runs; only what the gateway adds is lost,
		// and the client is told rather than left waiting for it.
		s.notice(m.RawHeader, fmt.Sprintf("more than %d executions are waiting for their reply: this one's permalink and files are not recorded", s.cfg.MaxPendingExecutions))
		return nil
	}
	if s.files != nil && !s.files.beforeExecute(m.Header.MsgID) {
		s.notice(m.RawHeader, fmt.Sprintf("more than %d executions are queued: the files this one writes are not uploaded", maxSnapshots))
	}
	return nil
}

// touch records client activity, pushing back the idle deadline.
func (s *session) touch() {
	s.mu.Lock()
	s.lastActive = time.Now()
	s.mu.Unlock()
	s.poke()
}

func (s *session) poke() {
	select {
	case s.activity <- struct{}{}:
	default:
	}
}

// attach registers a client; the returned func detaches it. A client that
// leaves on purpose (cleanly) lets a computed one-shot session end at
// once; one that dropped gets --detach-grace to come back.
func (s *session) attach(transport string) (detach func(clean bool)) {
	s.mu.Lock()
	s.clients++
	s.byTransport[transport]++
	s.mu.Unlock()
	s.touch()
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
			s.touch()
		})
	}
}

// transports reports which transports have a client attached.
func (s *session) transports() []string {
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

// restarted forgets the work the old kernel process had queued.
func (s *session) restarted() {
	s.mu.Lock()
	s.doneExecs = s.sentExecs
	s.state = jupytermsg.StateIdle
	s.kernelSess = ""
	s.mu.Unlock()
	s.touch()
}

// quiet reports whether the session counts as idle now: the kernel has
// nothing to do and, for the Jupyter API, nobody is connected. The idle
// timeout runs only while it is quiet.
func (s *session) quietLocked() bool {
	if s.state != jupytermsg.StateIdle || s.doneExecs < s.sentExecs {
		return false
	}
	return s.api != jupyterAPI || s.clients == 0
}

// watchLifetime ends the session on idle timeout, lifespan, or (one-shot)
// once it has computed and nobody is attached.
func (s *session) watchLifetime() {
	lifespan := time.NewTimer(s.life.lifespan)
	defer lifespan.Stop()
	check := time.NewTimer(time.Hour)
	defer check.Stop()
	for {
		s.mu.Lock()
		quiet := s.quietLocked()
		idleLeft := s.idleFor - time.Since(s.lastActive)
		computed := s.life.oneShot && quiet && s.doneExecs > 0 && s.clients == 0
		graceLeft := s.cfg.DetachGrace - time.Since(s.detachedAt)
		s.mu.Unlock()
		switch {
		case computed && graceLeft <= 0:
			s.end(endOneShot)
			return
		case quiet && idleLeft <= 0:
			s.end(endIdle)
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
			s.end(endLifespan)
			return
		case <-s.activity:
		case <-check.C:
		}
	}
}

// end stops the session for good: clients are told, the kernel is shut
// down (in the background), and onEnd hooks run.
func (s *session) end(reason string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.endReason = reason
		hooks := s.onEnd
		execs := s.executions
		s.mu.Unlock()
		close(s.ended)
		<-s.pumpStopped
		s.polls.stop(s)
		s.uploads.stop()
		if dead, err := s.gatewayMessage("status", nil, map[string]string{
			"execution_state": jupytermsg.StateDead, "reason": reason,
		}); err == nil {
			s.log.append(jupytermsg.IOPub, dead, "")
		}
		s.log.close()
		go s.cleanup()
		s.logger.Info().Str("api", s.api).Str("remote", s.remote).Str("reason", reason).
			Dur("duration", time.Since(s.created)).Int("executions", execs).Msg("session ended")
		for _, h := range hooks {
			h(s)
		}
	})
}

// cleanup releases the kernel once the uploader is done with its
// directory: the watcher holds it open, and the sandbox must be able to
// unmount it.
func (s *session) cleanup() {
	s.uploads.wait()
	s.files.close()
	s.kernel.Shutdown()
	close(s.stopped)
}

func (s *session) reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.endReason
}

func (s *session) snapshot() (state string, clients int, lastActive time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.clients, s.lastActive
}

// rememberCursor keeps where a client got to, so it can resume.
func (s *session) rememberCursor(clientSession string, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cursors == nil {
		s.cursors = map[string]uint64{}
	}
	// Bounded: a client that invents a session id per connection must
	// not grow this without end.
	if _, known := s.cursors[clientSession]; !known && len(s.cursors) >= maxRememberedClients {
		return
	}
	s.cursors[clientSession] = seq
}

func (s *session) cursor(clientSession string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.cursors[clientSession]
	return n, ok
}

// issued reports whether the session handed out permalink id.
func (s *session) issued(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.permalinks, id)
}

// routeTable remembers which client sent each recent request, so its
// replies reach that connection whatever session its header named. It is
// a bounded FIFO: the oldest requests are forgotten first.
type routeTable struct {
	by   map[string]string
	ring []string
	next int
}

func (r *routeTable) put(msgID, client string) {
	if r.by == nil {
		r.by = map[string]string{}
	}
	if _, known := r.by[msgID]; known {
		r.by[msgID] = client
		return
	}
	if len(r.ring) < maxRoutes {
		r.ring = append(r.ring, msgID)
	} else {
		delete(r.by, r.ring[r.next])
		r.ring[r.next] = msgID
		r.next = (r.next + 1) % maxRoutes
	}
	r.by[msgID] = client
}

func (r *routeTable) get(msgID string) string {
	if msgID == "" {
		return ""
	}
	return r.by[msgID]
}
