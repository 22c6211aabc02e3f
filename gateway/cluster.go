package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// Cluster is what the gateway needs of the other instances that share its
// database (package cluster, adapted by cellgate serve): who owns a session
// this instance does not hold, forwarding a request to it, claiming and
// releasing its own sessions, the cluster-wide count of an address's
// sessions, placement of a new session elsewhere, and publishing its load.
// Nil: the instance is alone, and every lookup is local.
type Cluster interface {
	// ID is this instance's id, which every answer names in the
	// Cellgate-Instance header (a forwarded one names the forwarding
	// instance, then the owner).
	ID() string
	// Middleware authenticates requests forwarded by other instances. It
	// runs before anything else.
	Middleware(next http.Handler) http.Handler
	// ForwardedClient tells whether r was forwarded by another instance
	// (authenticated), and the address of the client it served ("" if it
	// did not know). A forwarded request is never forwarded again.
	ForwardedClient(r *http.Request) (client string, forwarded bool)
	// Locate finds a session this instance does not hold: its owner
	// (another live instance), or that it ended (why), or neither: no
	// instance knows it.
	Locate(ctx context.Context, sessionID string) (Location, error)
	// Forward relays r to peer as sent by client. ErrPeerUnreachable
	// (wrapped) or ErrForwardLoop: nothing has been written.
	Forward(w http.ResponseWriter, r *http.Request, peer Peer, client string) error
	// Claim records this instance as the owner of a new session of client
	// address addr, before its id is given to anyone.
	Claim(ctx context.Context, sessionID, addr string) error
	// Release records that a session of this instance ended, and why.
	Release(ctx context.Context, sessionID, reason string) error
	// SessionsOf counts addr's live sessions on every instance, this one
	// included.
	SessionsOf(ctx context.Context, addr string) (int, error)
	// Place picks another instance with a ready kernel of kernel for a new
	// session; false: none.
	Place(ctx context.Context, kernel string) (Peer, bool)
	// SetLoad publishes this instance's load: its live sessions and ready
	// kernels per kernelspec.
	SetLoad(sessions int, ready map[string]int)
	// Peers lists the other live instances (draining ones too).
	Peers(ctx context.Context) ([]Peer, error)
	// DialWebsocket opens a websocket to the request URI uri on peer, for
	// the client at address client who reached this instance at host: the
	// bridge of a kernel owned elsewhere on a SockJS connection, which
	// carries several kernels and so cannot be forwarded whole. Errors wrap
	// ErrPeerUnreachable or ErrForwardLoop.
	DialWebsocket(ctx context.Context, peer Peer, uri, host, client string) (*websocket.Conn, error)
}

// Peer is another instance.
type Peer struct {
	ID  string
	URL string
}

// Location is where a session this instance does not hold is.
type Location struct {
	// Owner is the live instance that owns it; nil when none does.
	Owner *Peer
	// Ended is set when it has ended (Reason says why; its owner may have
	// died).
	Ended  bool
	Reason string
}

// Why Forward did not forward.
var (
	ErrPeerUnreachable = errors.New("gateway: the instance could not be reached")
	ErrForwardLoop     = errors.New("gateway: the request came from another instance")
)

// clusterRetryAfter is what a client is told to wait when a session's
// owner cannot be reached yet is not known dead (it is dying: the
// registry says so within its expiry).
const clusterRetryAfter = "2"

// InstanceHeader names the instances that handled a request, in order.
const InstanceHeader = "Cellgate-Instance"

// clusterIP takes the client address of a forwarded request from the
// forwarding instance, which vouches for it, and otherwise asks next.
func clusterIP(cl Cluster, next echo.IPExtractor) echo.IPExtractor {
	return func(r *http.Request) string {
		if client, ok := cl.ForwardedClient(r); ok && client != "" {
			return client
		}
		return next(r)
	}
}

// forwarded tells whether c's request came from another instance.
func (s *Server) forwarded(c echo.Context) bool {
	if s.cfg.Cluster == nil {
		return false
	}
	_, ok := s.cfg.Cluster.ForwardedClient(c.Request())
	return ok
}

// owned is the middleware of every route that names a session (by :id):
// a session this instance holds (or remembers ended) is served here; one
// another instance owns is forwarded to it, websockets included; one that
// ended elsewhere (or whose owner died) is answered as an ended session,
// as the owner's tombstone would; one nobody knows is left to the route's
// own "no such kernel". A request another instance forwarded is always
// answered here.
func (s *Server) owned(api session.API) echo.MiddlewareFunc {
	return s.ownedBy(api, s.sessions.knows)
}

// ownedBy is owned for ids this instance knows by local (for notebooks:
// jupyter_server's sessions, which are not gateway sessions).
func (s *Server) ownedBy(api session.API, local func(id string) bool) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		if s.cfg.Cluster == nil {
			return next
		}
		return func(c echo.Context) error {
			id, err := pathParam(c, "id")
			if err != nil || local(id) || s.forwarded(c) {
				return next(c)
			}
			reach := s.reachOwner(c.Request().Context(), id, "cluster: forward failed", func(owner Peer) error {
				return s.forwardTo(c, owner)
			})
			switch reach.outcome {
			case ownerReached:
				return nil
			case ownerLookupFailed:
				s.log.Warn().Err(reach.err).Str("session", id).Msg("cluster: owner lookup failed")
				c.Response().Header().Set("Retry-After", clusterRetryAfter)
				return httpError(c, http.StatusServiceUnavailable, "cannot find the kernel's instance now: "+reach.err.Error())
			case ownerUnreachable:
				c.Response().Header().Set("Retry-After", clusterRetryAfter)
				return httpError(c, http.StatusServiceUnavailable, "the kernel's instance cannot be reached now")
			case ownerEnded:
				if api != "" {
					s.sessions.addForeign(id, api, reach.reason)
				}
			}
			return next(c)
		}
	}
}

// ownerOutcome is how reaching the owner of a session this instance does
// not hold went.
type ownerOutcome int

const (
	// ownerReached: the owner has the request.
	ownerReached ownerOutcome = iota
	// ownerLoop: the owner refused a request another instance forwarded;
	// it is answered here.
	ownerLoop
	// ownerNone: no instance knows the session.
	ownerNone
	// ownerEnded: the session ended elsewhere, or its owner died.
	ownerEnded
	// ownerLookupFailed: the registry could not say who owns it.
	ownerLookupFailed
	// ownerUnreachable: its owner could not be reached, asked twice.
	ownerUnreachable
)

// ownerReach is what reachOwner found: reason is why the session ended
// (ownerEnded), err why the lookup failed (ownerLookupFailed).
type ownerReach struct {
	outcome ownerOutcome
	reason  string
	err     error
}

// reachOwner locates the owner of session id and calls try with it; when
// try cannot reach it (an error other than ErrForwardLoop, after which
// nothing has been written), it asks the registry once more, as the owner
// may have just died and the session ended. unreachableLog is the debug
// line logged for each owner try could not reach.
func (s *Server) reachOwner(ctx context.Context, id, unreachableLog string, try func(owner Peer) error) ownerReach {
	for attempt := 0; attempt < 2; attempt++ {
		loc, err := s.cfg.Cluster.Locate(ctx, id)
		if err != nil {
			return ownerReach{outcome: ownerLookupFailed, err: err}
		}
		if loc.Owner == nil {
			if loc.Ended {
				return ownerReach{outcome: ownerEnded, reason: loc.Reason}
			}
			return ownerReach{outcome: ownerNone}
		}
		err = try(*loc.Owner)
		switch {
		case err == nil:
			return ownerReach{outcome: ownerReached}
		case errors.Is(err, ErrForwardLoop):
			return ownerReach{outcome: ownerLoop}
		}
		s.log.Debug().Err(err).Str("session", id).Msg(unreachableLog)
	}
	return ownerReach{outcome: ownerUnreachable}
}

// forwardTo forwards c's request, as it is, to peer.
func (s *Server) forwardTo(c echo.Context, peer Peer) error {
	dropCORS(c.Response().Header())
	return s.cfg.Cluster.Forward(c.Response(), c.Request(), peer, c.RealIP())
}

// forwardWithBody forwards c's request to peer with body, which the
// handler has already read, as its body.
func (s *Server) forwardWithBody(c echo.Context, peer Peer, body []byte) error {
	r := c.Request()
	r.Body = newBodyReader(body)
	r.ContentLength = int64(len(body))
	return s.forwardTo(c, peer)
}

// dropCORS removes the CORS headers this instance's middleware set: the
// owner answers with its own, and two of each would be refused by browsers.
func dropCORS(h http.Header) {
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") || name == "Vary" {
			h.Del(name)
		}
	}
}

// sockjsBridge opens, for a SockJS connection here (r is its request),
// the Sage-cell websocket of kernel id at the instance that owns it, as
// client clientID; the error says why there is none: no cluster, nobody
// knows the kernel, it ended elsewhere (with its reason), or its owner
// cannot be reached now.
func (s *Server) sockjsBridge(ctx context.Context, r *http.Request, id, clientID string) (*websocket.Conn, error) {
	noSuch := fmt.Errorf("no such kernel %q", id)
	if s.cfg.Cluster == nil {
		return nil, noSuch
	}
	if _, forwarded := s.cfg.Cluster.ForwardedClient(r); forwarded {
		return nil, noSuch
	}
	ctx, cancel := context.WithTimeout(ctx, clusterCallTimeout)
	defer cancel()
	uri := "/kernel/" + url.PathEscape(id) + "/channels?session_id=" + url.QueryEscape(clientID)
	var conn *websocket.Conn
	reach := s.reachOwner(ctx, id, "cluster: SockJS bridge failed", func(owner Peer) error {
		var err error
		conn, err = s.cfg.Cluster.DialWebsocket(ctx, owner, uri, r.Host, s.echo.IPExtractor(r))
		return err
	})
	switch reach.outcome {
	case ownerReached:
		return conn, nil
	case ownerLookupFailed:
		return nil, fmt.Errorf("cannot find the kernel's instance now: %w", reach.err)
	case ownerEnded:
		return nil, fmt.Errorf("kernel %q ended: %s", id, reach.reason)
	case ownerUnreachable:
		return nil, errors.New("the kernel's instance cannot be reached now")
	}
	return nil, noSuch
}

// placeElsewhere forwards a request for a new session of kernel to another
// instance when this one has no ready kernel of it and another has (a
// burst spreads across instances rather than queueing here), or when this
// one is draining (the balancer has not noticed yet). It reports whether
// the request was answered. body is the request's body, already read
// (restored for the forward).
func (s *Server) placeElsewhere(c echo.Context, kernel string, body []byte) bool {
	if s.cfg.Cluster == nil || s.forwarded(c) || (s.readyHere(kernel) && !s.sessions.isDraining()) || (body == nil && c.Request().ContentLength > 0) {
		return false
	}
	peer, ok := s.cfg.Cluster.Place(c.Request().Context(), kernel)
	if !ok {
		return false
	}
	if err := s.forwardWithBody(c, peer, body); err != nil {
		s.log.Debug().Err(err).Str("to", peer.ID).Msg("cluster: placement elsewhere failed; starting here")
		return false
	}
	s.log.Debug().Str("to", peer.ID).Str("kernel", kernel).Msg("cluster: new session placed on another instance")
	return true
}

// forwardToOwner sends a request that names kernel id, which this
// instance does not hold, to the instance that owns it: a notebook made
// for another instance's kernel lives where its kernel does, as every
// notebook does. It reports whether the request was answered; false
// leaves the handler to answer "no such kernel" (nobody owns it, it
// ended, or its owner cannot be reached). body as for placeElsewhere.
func (s *Server) forwardToOwner(c echo.Context, id string, body []byte) bool {
	if s.cfg.Cluster == nil || s.forwarded(c) || (body == nil && c.Request().ContentLength > 0) {
		return false
	}
	reach := s.reachOwner(c.Request().Context(), id, "cluster: forward to the kernel's owner failed", func(owner Peer) error {
		return s.forwardWithBody(c, owner, body)
	})
	if reach.outcome == ownerLookupFailed {
		s.log.Warn().Err(reach.err).Str("session", id).Msg("cluster: owner lookup failed")
	}
	return reach.outcome == ownerReached
}

// keepBody reads a request for a new session's body into memory (the body
// limit bounds it) and puts it back, so that placeElsewhere can send it to
// another instance once the handler has read it. Nil alone, or for a
// request that cannot be placed elsewhere.
func (s *Server) keepBody(c echo.Context) []byte {
	r := c.Request()
	if s.cfg.Cluster == nil || s.forwarded(c) || r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		// Over the limit: the handler reads the same error.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(raw), errReader{err}))
		return nil
	}
	r.Body = newBodyReader(raw)
	return raw
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func newBodyReader(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

// readyHere tells whether the pool has a ready kernel of kernel.
func (s *Server) readyHere(kernel string) bool {
	for _, st := range s.pool.Stats() {
		if st.Name == kernel {
			return st.Ready > 0
		}
	}
	return false
}

// claim records a new session in the cluster before its id is answered.
func (s *Server) claim(ctx context.Context, sess *session.Session) error {
	return s.claimID(ctx, sess.ID(), sess.Remote())
}

// claimID records id (a session, or a notebook: addr "") as this
// instance's in the cluster.
func (s *Server) claimID(ctx context.Context, id, addr string) error {
	if s.cfg.Cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clusterCallTimeout)
	defer cancel()
	return s.cfg.Cluster.Claim(ctx, id, addr)
}

// release records an ended session's reason in the cluster, in the
// background (End may be called from a request); Drain waits for it.
func (s *Server) release(sess *session.Session) {
	s.releaseID(sess.ID(), sess.Reason())
}

// releaseID records that id (a session or a notebook) ended here, and why.
func (s *Server) releaseID(id, reason string) {
	if s.cfg.Cluster == nil {
		return
	}
	s.releases.add()
	go func() {
		defer s.releases.done()
		ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
		defer cancel()
		if err := s.cfg.Cluster.Release(ctx, id, reason); err != nil {
			s.log.Warn().Err(err).Str("session", id).Msg("cluster: release session")
		}
	}()
}

// fromPeers gathers the JSON arrays that the other instances answer to
// this request (a list: GET /api/kernels, /api/sessions), each as its own
// client asked it (they apply the token and visibility rules), for a
// cluster-wide list. Jupyter clients shut down the kernels a list leaves
// out, so a list from one instance would end the others' for them. An
// instance that does not answer is left out (it is dying).
func (s *Server) fromPeers(c echo.Context) []json.RawMessage {
	if s.cfg.Cluster == nil || s.forwarded(c) {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), clusterCallTimeout)
	defer cancel()
	peers, err := s.cfg.Cluster.Peers(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("cluster: list instances")
		return nil
	}
	var (
		mu  sync.Mutex
		out []json.RawMessage
		wg  sync.WaitGroup
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &recorder{header: http.Header{}}
			r := c.Request().Clone(ctx)
			r.Body = http.NoBody
			if err := s.cfg.Cluster.Forward(rec, r, p, c.RealIP()); err != nil || rec.code != http.StatusOK {
				return
			}
			var items []json.RawMessage
			if json.Unmarshal(rec.body.Bytes(), &items) != nil {
				return
			}
			mu.Lock()
			out = append(out, items...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// rawList is items as JSON values, to be sent with others'.
func rawList[T any](items []T) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		if b, err := json.Marshal(it); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// recorder is the answer of a peer to a request made on a client's
// behalf, kept in memory (lists are small).
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	if r.body.Len()+len(b) > maxPeerList {
		return 0, errors.New("gateway: a peer's list is too long")
	}
	return r.body.Write(b)
}

func (r *recorder) Flush() {}

// maxPeerList bounds the list one peer answers.
const maxPeerList = 16 << 20

// clusterCallTimeout bounds one registry write on a session's path.
const clusterCallTimeout = 5 * time.Second

// othersOf is how many sessions of addr other instances hold: the
// cluster's count less this instance's own (claimed) ones. Zero alone or
// when the database cannot say (the local cap still holds).
func (s *Server) othersOf(ctx context.Context, addr string) int {
	if s.cfg.Cluster == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, clusterCallTimeout)
	defer cancel()
	n, err := s.cfg.Cluster.SessionsOf(ctx, addr)
	if err != nil {
		s.log.Warn().Err(err).Msg("cluster: count an address's sessions")
		return 0
	}
	return max(0, n-s.sessions.liveOf(addr))
}

// PublishLoad publishes this instance's load to the cluster every
// interval until ctx ends: its live sessions and ready kernels per
// kernelspec, which placement elsewhere goes by. Nothing without a
// cluster.
func (s *Server) PublishLoad(ctx context.Context, interval time.Duration) {
	if s.cfg.Cluster == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ready := map[string]int{}
		for _, st := range s.pool.Stats() {
			ready[st.Name] = st.Ready
		}
		s.cfg.Cluster.SetLoad(s.sessions.count(), ready)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// EndSessions ends every live session with reason, without refusing new
// ones (cellgate serve calls it when the cluster declared this instance
// dead while it lived: the others have told its clients that its sessions
// ended), and waits for their kernels up to ctx.
func (s *Server) EndSessions(ctx context.Context, reason string) {
	all := s.sessions.all()
	var wg sync.WaitGroup
	for _, sess := range all {
		wg.Add(1)
		go func() { defer wg.Done(); sess.End(reason) }()
	}
	wg.Wait()
	for _, sess := range all {
		select {
		case <-sess.Stopped():
		case <-ctx.Done():
			return
		}
	}
}

// EndLost is why a session ended when the cluster lost this instance.
const EndLost = "this server lost contact with the cluster"

// foreignLast stands for the last sequence number of a session that ended
// on another instance: not known here, so any since a client sends is
// taken.
const foreignLast = math.MaxUint64

// endedChannels answers a websocket for a session that is not live here:
// one that ended on another instance (or whose instance died) gets the
// upgrade, the status dead with the reason on iopub that its live clients
// got, and a close; any other is "no such kernel", as before clusters.
func (s *Server) endedChannels(c echo.Context, api session.API, cd codec) error {
	id, err := pathParam(c, "id")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	t, ok := s.sessions.tombstone(id)
	if !ok || !t.foreign || t.api != api || !websocket.IsWebSocketUpgrade(c.Request()) {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	conn, upgraded := s.upgrade(c, cd)
	if !upgraded {
		return nil // upgrade has answered
	}
	defer conn.Close()
	cd = cd.forProtocol(conn.Subprotocol())
	dead, err := jupytermsg.New("status", "", nil, map[string]string{"execution_state": jupytermsg.StateDead, "reason": t.reason})
	if err == nil {
		if kind, data, err := cd.encode(session.Entry{Seq: 1, Channel: jupytermsg.IOPub, Msg: dead}); err == nil {
			_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			_ = conn.WriteMessage(kind, data)
		}
	}
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "session ended: "+t.reason), time.Now().Add(time.Second))
	return nil
}

// inflight counts calls in flight, and waits until there are none. Unlike
// a sync.WaitGroup, calls may start while someone waits.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 {
		close(f.idle)
	}
}

// wait returns once none is in flight, or with ctx's error.
func (f *inflight) wait(ctx context.Context) error {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return nil
	}
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
