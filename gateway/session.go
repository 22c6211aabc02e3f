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
	filesRequest = "_sagecell_files"

	maxRememberedClients = 1024
	gatewayMsgPrefix     = "cellgate."
	maxPendingExecutions = 256
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

	mu         sync.Mutex
	lastActive time.Time
	idleFor    time.Duration
	clients    int
	executions int
	executed   bool
	state      string
	pending    map[string]pendingExecution // by execute_request msg_id
	permalinks []string                    // ids handed out, to report drops
	cursors    map[string]uint64           // where each client session got to
	polls      pollPresence
	files      *executionFiles
	metrics    *metrics
	// finish rewrites an execute_reply of a tracked execution (files,
	// permalink); set by the server before the first message.
	finish func(s *session, reply *jupytermsg.Message, p pendingExecution) *jupytermsg.Message
	// permalink records an execution's code; "" when not stored.
	permalink   func(s *session, code string) string
	onEnd       []func(*session)
	activity    chan struct{}
	ended       chan struct{}
	endReason   string
	endOnce     sync.Once
	pumpStopped chan struct{}
}

func newSession(k *kernelpool.Kernel, spec, api, remote, owner string, life lifetime, cfg *Config) *session {
	now := time.Now()
	s := &session{
		id: k.ID, kernel: k, spec: spec, api: api, remote: remote, owner: owner, created: now,
		log:    newReplayLog(cfg.ReplayMessages, cfg.ReplayBytes),
		logger: cfg.Log.With().Str("session", k.ID).Str("kernel", spec).Logger(),
		life:   life, lastActive: now, idleFor: life.idle, state: jupytermsg.StateIdle,
		pending: map[string]pendingExecution{}, activity: make(chan struct{}, 1),
		ended: make(chan struct{}), pumpStopped: make(chan struct{}),
	}
	return s
}

// start runs the session's goroutines, once its hooks are set.
func (s *session) start() {
	go s.pump()
	go s.watchLifetime()
}

// pendingExecution is what the gateway adds to an execution's reply.
type pendingExecution struct {
	wantsFiles bool
	permalink  string
}

// pump moves every kernel message into the replay log. It never waits for
// clients, so a slow client cannot stall the kernel or other clients.
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
	if strings.HasPrefix(m.Header.MsgType, gatewayMsgPrefix) {
		// Only the gateway speaks for itself: a kernel could otherwise
		// announce files (links) of its choosing.
		s.metrics.errors.WithLabelValues("forged_message").Inc()
		s.logger.Warn().Str("msg_type", m.Header.MsgType).Msg("dropped a kernel message posing as the gateway's")
		return
	}
	s.metrics.relayed.WithLabelValues("out", string(r.Channel)).Inc()
	to := ""
	if r.Channel != jupytermsg.IOPub {
		to = m.Parent().Session
	}
	switch m.Header.MsgType {
	case "status":
		var st jupytermsg.Status
		if m.DecodeContent(&st) == nil {
			s.mu.Lock()
			s.state = st.ExecutionState
			s.mu.Unlock()
			if st.ExecutionState == jupytermsg.StateIdle {
				s.poke()
			}
		}
	case "comm_open", "comm_msg":
		// An interact is in use: keep the session alive up to the cap.
		s.extendIdle(s.life.maxIdle)
	case "execute_reply":
		parent := m.ParentMsgID()
		s.mu.Lock()
		p, tracked := s.pending[parent]
		delete(s.pending, parent)
		s.mu.Unlock()
		if tracked && s.finish != nil {
			m = s.finish(s, m, p)
		}
	}
	s.log.append(r.Channel, m, to)
}

// notice tells the clients of the request with parentHeader something on
// stderr.
func (s *session) notice(parentHeader []byte, text string) {
	m, err := jupytermsg.New("stream", s.kernel.Session, nil, jupytermsg.Stream{Name: "stderr", Text: "[cellgate] " + text + "\n"})
	if err != nil {
		return
	}
	m.ParentHeader = parentHeader
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

// send relays a client message to the kernel. clientSession is the
// sending client's session id, used when the header lacks one and to
// route the replies back.
func (s *session) send(clientSession string, ch jupytermsg.Channel, m *jupytermsg.Message) error {
	select {
	case <-s.ended:
		return fmt.Errorf("%w: %s", errSessionEnded, s.reason())
	default:
	}
	if err := jupytermsg.FillHeader(m, clientSession); err != nil {
		return err
	}
	if !clientMaySend(ch, m.Header.MsgType) {
		return fmt.Errorf("%s is not a request clients may send on the %s channel", m.Header.MsgType, ch)
	}
	if m.Header.MsgType == "execute_request" && ch == jupytermsg.Shell {
		if err := s.prepareExecute(m); err != nil {
			return err
		}
	}
	s.touch()
	s.metrics.relayed.WithLabelValues("in", string(ch)).Inc()
	if err := s.kernel.Send(ch, m); err != nil {
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
	s.mu.Lock()
	s.executions++
	s.executed = true
	s.mu.Unlock()
	s.metrics.executions.WithLabelValues(s.api).Inc()
	if _, ok := content["code"]; !ok {
		return errors.New("execute_request without code")
	}
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
	if s.permalink != nil {
		var code string
		_ = json.Unmarshal(content["code"], &code)
		var silent bool
		_ = json.Unmarshal(content["silent"], &silent)
		if code != "" && !silent {
			p.permalink = s.permalink(s, code)
			s.mu.Lock()
			if p.permalink != "" && len(s.permalinks) < maxPendingExecutions {
				s.permalinks = append(s.permalinks, p.permalink)
			}
			s.mu.Unlock()
		}
	}
	s.files.beforeExecute(m.Header.MsgID)
	if p.wantsFiles || p.permalink != "" || s.files != nil {
		s.mu.Lock()
		if len(s.pending) < maxPendingExecutions {
			s.pending[m.Header.MsgID] = p
		}
		s.mu.Unlock()
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

// extendIdle raises the idle timeout, never past the server's cap.
func (s *session) extendIdle(d time.Duration) {
	s.mu.Lock()
	if d > s.idleFor {
		s.idleFor = min(d, s.life.maxIdle)
	}
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

// attach registers a client; the returned func detaches it.
func (s *session) attach() (detach func()) {
	s.mu.Lock()
	s.clients++
	s.mu.Unlock()
	s.touch()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.clients--
			s.mu.Unlock()
			s.touch()
		})
	}
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
		idleLeft := s.idleFor - time.Since(s.lastActive)
		finished := s.life.oneShot && s.executed && s.state == jupytermsg.StateIdle && s.clients == 0
		s.mu.Unlock()
		switch {
		case finished:
			s.end(endOneShot)
			return
		case idleLeft <= 0:
			s.end(endIdle)
			return
		}
		check.Reset(max(idleLeft, 10*time.Millisecond))
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
// down, and onEnd hooks run.
func (s *session) end(reason string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.endReason = reason
		hooks := s.onEnd
		execs := s.executions
		s.mu.Unlock()
		close(s.ended)
		<-s.pumpStopped
		if dead, err := deadStatus(s.kernel.Session, reason); err == nil {
			s.log.append(jupytermsg.IOPub, dead, "")
		}
		s.log.close()
		// The watcher holds the working directory open; the sandbox must
		// be able to unmount it.
		s.files.close()
		go s.kernel.Shutdown()
		s.logger.Info().Str("api", s.api).Str("remote", s.remote).Str("reason", reason).
			Dur("duration", time.Since(s.created)).Int("executions", execs).Msg("session ended")
		for _, h := range hooks {
			h(s)
		}
	})
}

// deadStatus is the final message every client gets. It carries the
// kernel's session id: Jupyter clients drop status messages of other
// sessions.
func deadStatus(kernelSession, reason string) (*jupytermsg.Message, error) {
	m, err := jupytermsg.New("status", kernelSession, nil, map[string]string{
		"execution_state": jupytermsg.StateDead, "reason": reason,
	})
	return m, err
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
