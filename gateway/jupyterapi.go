package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// The Jupyter Server kernel API, as @jupyterlab/services, Thebe and
// Jupyter Server's gateway client use it. Shapes and status codes follow
// jupyter_server; see PROTOCOL-NOTES.md.

func (s *Server) jupyterRoutes(e *echo.Echo) {
	api := e.Group("/api", s.requireToken)
	api.GET("", s.apiInfo)
	api.GET("/", s.apiInfo)
	api.GET("/status", s.apiStatus)
	api.GET("/kernelspecs", s.apiKernelspecs)
	api.GET("/kernels", s.apiListKernels)
	api.POST("/kernels", s.apiStartKernel)
	api.GET("/kernels/:id", s.apiGetKernel)
	api.DELETE("/kernels/:id", s.apiDeleteKernel)
	api.POST("/kernels/:id/interrupt", s.apiInterrupt)
	api.POST("/kernels/:id/restart", s.apiRestart)
	api.GET("/kernels/:id/channels", s.apiChannels)
	api.GET("/sessions", s.apiListSessions)
	api.POST("/sessions", s.apiCreateSession)
	api.GET("/sessions/:id", s.apiGetSession)
	api.PATCH("/sessions/:id", s.apiPatchSession)
	api.DELETE("/sessions/:id", s.apiDeleteSession)
}

// requireToken checks `Authorization: token T`, `Bearer T` or ?token=T.
func (s *Server) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.cfg.Token == "" {
			return next(c)
		}
		given := c.QueryParam("token")
		if auth := c.Request().Header.Get("Authorization"); auth != "" {
			scheme, value, _ := strings.Cut(auth, " ")
			if strings.EqualFold(scheme, "token") || strings.EqualFold(scheme, "bearer") {
				given = strings.TrimSpace(value)
			}
		}
		if subtle.ConstantTimeCompare([]byte(given), []byte(s.cfg.Token)) != 1 {
			return httpError(c, http.StatusUnauthorized, "missing or invalid token")
		}
		return next(c)
	}
}

const jupyterServerVersion = "2.14.0"

func (s *Server) apiInfo(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"version": jupyterServerVersion})
}

func (s *Server) apiStatus(c echo.Context) error {
	s.mu.Lock()
	kernels := len(s.sessions)
	s.mu.Unlock()
	status := map[string]any{
		"started": s.started.UTC().Format(time.RFC3339), "last_activity": time.Now().UTC().Format(time.RFC3339),
		"connections": 0, "kernels": kernels,
	}
	if s.cfg.SandboxWarning != "" {
		status["warning"] = s.cfg.SandboxWarning
	}
	return c.JSON(http.StatusOK, status)
}

type specModel struct {
	Name      string                `json:"name"`
	Spec      jupytermsg.KernelSpec `json:"spec"`
	Resources map[string]string     `json:"resources"`
}

func (s *Server) apiKernelspecs(c echo.Context) error {
	specs := map[string]specModel{}
	for name, sp := range s.pool.Specs() {
		ks := sp.KernelSpec
		ks.Env = nil // the server's business
		if ks.Metadata == nil {
			ks.Metadata = json.RawMessage("{}")
		}
		specs[name] = specModel{Name: name, Spec: ks, Resources: map[string]string{}}
	}
	return c.JSON(http.StatusOK, map[string]any{"default": s.cfg.DefaultKernel, "kernelspecs": specs})
}

// kernelModel is jupyter_server's kernel model.
type kernelModel struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	LastActivity   string `json:"last_activity"`
	ExecutionState string `json:"execution_state"`
	Connections    int    `json:"connections"`
}

func (sess *session) model() kernelModel {
	state, clients, last := sess.snapshot()
	return kernelModel{ID: sess.id, Name: sess.spec, LastActivity: last.UTC().Format("2006-01-02T15:04:05.000000Z"), ExecutionState: state, Connections: clients}
}

// visible reports whether the caller may see a Jupyter-API session. With a
// token the caller is the operator; without one, kernel ids are
// capabilities, so callers only see the kernels their address started.
func (s *Server) visible(c echo.Context, sess *session) bool {
	if sess == nil || sess.api != jupyterAPI {
		return false
	}
	return s.cfg.Token != "" || sess.remote == c.RealIP()
}

// jupyterSession is the Jupyter-API session the route's id names.
func (s *Server) jupyterSession(c echo.Context) *session {
	id, err := pathParam(c, "id")
	if err != nil {
		return nil
	}
	return s.jupyterKernel(c, id)
}

// jupyterKernel is the Jupyter-API session id, if the caller may see it.
func (s *Server) jupyterKernel(c echo.Context, id string) *session {
	if sess := s.lookupAPI(id, jupyterAPI); s.visible(c, sess) {
		return sess
	}
	return nil
}

func (s *Server) apiListKernels(c echo.Context) error {
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	models := []kernelModel{}
	for _, sess := range all {
		if s.visible(c, sess) {
			models = append(models, sess.model())
		}
	}
	sort.Slice(models, func(i, j int) bool { return models[i].ID < models[j].ID })
	return c.JSON(http.StatusOK, models)
}

// startJupyterKernel starts a kernel with the Jupyter API's lifetime.
func (s *Server) startJupyterKernel(c echo.Context, asked string) (*session, error) {
	spec, err := s.resolveKernel(asked)
	if err != nil {
		return nil, err
	}
	life := lifetime{idle: s.cfg.JupyterIdleTimeout, maxIdle: max(s.cfg.JupyterIdleTimeout, s.cfg.MaxTimeout), lifespan: s.cfg.MaxLifespan}
	return s.startSession(c.Request().Context(), spec, jupyterAPI, c.RealIP(), "", "", life)
}

func (s *Server) apiStartKernel(c echo.Context) error {
	// The client's "env" is ignored: kernels get the sandbox's environment.
	var body struct {
		Name string `json:"name"`
	}
	if c.Request().ContentLength != 0 {
		if err := json.NewDecoder(c.Request().Body).Decode(&body); err != nil {
			return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		}
	}
	sess, err := s.startJupyterKernel(c, body.Name)
	if err != nil {
		return sessionError(c, err)
	}
	c.Response().Header().Set("Location", "/api/kernels/"+sess.id)
	return c.JSON(http.StatusCreated, sess.model())
}

func (s *Server) apiGetKernel(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	return c.JSON(http.StatusOK, sess.model())
}

func (s *Server) apiDeleteKernel(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	sess.end(endDeleted)
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) apiInterrupt(c echo.Context) error {
	return interrupt(c, s.jupyterSession(c))
}

func (s *Server) apiRestart(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Minute)
	defer cancel()
	if err := sess.kernel.Restart(ctx); err != nil {
		return fmt.Errorf("restart kernel %s: %w", sess.id, err)
	}
	sess.restarted()
	return c.JSON(http.StatusOK, sess.model())
}

func (s *Server) apiChannels(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	return s.bridge(c, sess, jupyterCodec{})
}

// notebookSession is jupyter_server's session: a name for a kernel.
type notebookSession struct {
	ID       string
	Path     string
	Name     string
	Type     string
	kernelID string
}

// Bounds of the notebook sessions: clients may create them at will.
const (
	maxSessionField       = 4 << 10 // bytes of a path, name or type
	maxSessionsPerKernel  = 64
	maxNotebookSessionsAt = 10000
)

// notebookSessions holds the notebook sessions. Its methods hand out
// copies: PATCH changes an entry while other requests read it.
type notebookSessions struct {
	mu       sync.Mutex
	byID     map[string]*notebookSession
	byKernel map[string]int
}

var (
	errTooManySessions = errors.New("too many notebook sessions")
	errKernelSessions  = errors.New("too many notebook sessions for this kernel")
)

// add records ns, or returns the live session already at its path for
// the same kind, as jupyter_server does.
func (n *notebookSessions) add(ns notebookSession) (notebookSession, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byID == nil {
		n.byID, n.byKernel = map[string]*notebookSession{}, map[string]int{}
	}
	if ns.Path != "" {
		for _, old := range n.byID {
			if old.Path == ns.Path && old.kernelID == ns.kernelID && old.Type == ns.Type {
				return *old, nil
			}
		}
	}
	if len(n.byID) >= maxNotebookSessionsAt {
		return notebookSession{}, fmt.Errorf("%w: %d", errTooManySessions, len(n.byID))
	}
	if n.byKernel[ns.kernelID] >= maxSessionsPerKernel {
		return notebookSession{}, fmt.Errorf("%w: %d", errKernelSessions, maxSessionsPerKernel)
	}
	stored := ns
	n.byID[ns.ID] = &stored
	n.byKernel[ns.kernelID]++
	return ns, nil
}

func (n *notebookSessions) get(id string) (notebookSession, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, ok := n.byID[id]
	if !ok {
		return notebookSession{}, false
	}
	return *ns, true
}

func (n *notebookSessions) all() []notebookSession {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]notebookSession, 0, len(n.byID))
	for _, ns := range n.byID {
		out = append(out, *ns)
	}
	return out
}

// update applies req to session id and returns the result.
func (n *notebookSessions) update(id string, req sessionRequest, kernelID string) (notebookSession, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, ok := n.byID[id]
	if !ok {
		return notebookSession{}, false
	}
	req.applyTo(ns)
	if ns.kernelID != kernelID {
		n.dropLocked(ns)
		ns.kernelID = kernelID
		n.byKernel[kernelID]++
	}
	return *ns, true
}

func (n *notebookSessions) remove(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ns, ok := n.byID[id]; ok {
		n.dropLocked(ns)
		delete(n.byID, id)
	}
}

func (n *notebookSessions) dropLocked(ns *notebookSession) {
	if n.byKernel[ns.kernelID]--; n.byKernel[ns.kernelID] <= 0 {
		delete(n.byKernel, ns.kernelID)
	}
}

// dropKernel forgets the sessions of a kernel that has ended.
func (n *notebookSessions) dropKernel(kernelID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byKernel[kernelID] == 0 {
		return
	}
	for id, ns := range n.byID {
		if ns.kernelID == kernelID {
			delete(n.byID, id)
		}
	}
	delete(n.byKernel, kernelID)
}

func (s *Server) sessionModel(ns notebookSession, sess *session) map[string]any {
	return map[string]any{"id": ns.ID, "path": ns.Path, "name": ns.Name, "type": ns.Type, "kernel": sess.model(), "notebook": map[string]string{"path": ns.Path, "name": ns.Name}}
}

// liveNotebookSessions returns the sessions the caller may see.
func (s *Server) liveNotebookSessions(c echo.Context) []map[string]any {
	out := []map[string]any{}
	for _, ns := range s.nbs.all() {
		if sess := s.jupyterKernel(c, ns.kernelID); sess != nil {
			out = append(out, s.sessionModel(ns, sess))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i]["id"].(string) < out[j]["id"].(string) })
	return out
}

func (s *Server) apiListSessions(c echo.Context) error {
	return c.JSON(http.StatusOK, s.liveNotebookSessions(c))
}

type sessionRequest struct {
	Path   *string `json:"path"`
	Name   *string `json:"name"`
	Type   *string `json:"type"`
	Kernel *struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"kernel"`
}

// applyTo sets the fields the request gives.
func (r sessionRequest) applyTo(ns *notebookSession) {
	if r.Path != nil {
		ns.Path = *r.Path
	}
	if r.Name != nil {
		ns.Name = *r.Name
	}
	if r.Type != nil {
		ns.Type = *r.Type
	}
}

// check refuses fields no notebook needs at that size.
func (r sessionRequest) check() error {
	for what, v := range map[string]*string{"path": r.Path, "name": r.Name, "type": r.Type} {
		if v != nil && len(*v) > maxSessionField {
			return fmt.Errorf("%s longer than %d bytes", what, maxSessionField)
		}
	}
	return nil
}

func decodeSessionRequest(c echo.Context) (sessionRequest, error) {
	var req sessionRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return req, fmt.Errorf("invalid JSON body: %w", err)
	}
	return req, req.check()
}

func notebookError(c echo.Context, err error) error {
	switch {
	case errors.Is(err, errKernelSessions):
		return httpError(c, http.StatusTooManyRequests, err.Error())
	case errors.Is(err, errTooManySessions):
		return httpError(c, http.StatusServiceUnavailable, err.Error())
	}
	return err
}

func (s *Server) apiCreateSession(c echo.Context) error {
	req, err := decodeSessionRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	ns := notebookSession{ID: uuid.NewString(), Type: "notebook"}
	req.applyTo(&ns)
	if ns.Path != "" && (req.Kernel == nil || req.Kernel.ID == "") {
		// jupyter_server answers a session for a path that has one with
		// that session, rather than starting another kernel.
		for _, old := range s.nbs.all() {
			if old.Path == ns.Path && old.Type == ns.Type {
				if sess := s.jupyterKernel(c, old.kernelID); sess != nil {
					c.Response().Header().Set("Location", "/api/sessions/"+old.ID)
					return c.JSON(http.StatusCreated, s.sessionModel(old, sess))
				}
			}
		}
	}
	var sess *session
	started := false
	if req.Kernel != nil && req.Kernel.ID != "" {
		if sess = s.jupyterKernel(c, req.Kernel.ID); sess == nil {
			return httpError(c, http.StatusBadRequest, "no such kernel "+req.Kernel.ID)
		}
	} else {
		name := ""
		if req.Kernel != nil {
			name = req.Kernel.Name
		}
		if sess, err = s.startJupyterKernel(c, name); err != nil {
			return sessionError(c, err)
		}
		started = true
	}
	ns.kernelID = sess.id
	ns, err = s.nbs.add(ns)
	if err != nil {
		if started {
			sess.end(endDeleted)
		}
		return notebookError(c, err)
	}
	c.Response().Header().Set("Location", "/api/sessions/"+ns.ID)
	return c.JSON(http.StatusCreated, s.sessionModel(ns, sess))
}

// findNotebookSession returns a visible session and its kernel.
func (s *Server) findNotebookSession(c echo.Context) (notebookSession, *session) {
	ns, ok := s.nbs.get(c.Param("id"))
	if !ok {
		return ns, nil
	}
	return ns, s.jupyterKernel(c, ns.kernelID)
}

func (s *Server) apiGetSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	return c.JSON(http.StatusOK, s.sessionModel(ns, sess))
}

func (s *Server) apiPatchSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	req, err := decodeSessionRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	next, started := sess, false
	if req.Kernel != nil {
		if req.Kernel.ID != "" {
			if next = s.jupyterKernel(c, req.Kernel.ID); next == nil {
				return httpError(c, http.StatusBadRequest, "no such kernel "+req.Kernel.ID)
			}
		} else {
			if next, err = s.startJupyterKernel(c, req.Kernel.Name); err != nil {
				return sessionError(c, err)
			}
			started = true
		}
	}
	updated, ok := s.nbs.update(ns.ID, req, next.id)
	if !ok {
		// Deleted meanwhile: a kernel started for it has no one to use it.
		if started {
			next.end(endDeleted)
		}
		return httpError(c, http.StatusNotFound, "no such session")
	}
	// The old kernel ends only once this session has moved off it: its end
	// hooks forget every notebook session still on it.
	if next != sess {
		sess.end(endDeleted)
	}
	return c.JSON(http.StatusOK, s.sessionModel(updated, next))
}

func (s *Server) apiDeleteSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	s.nbs.remove(ns.ID)
	sess.end(endDeleted)
	return c.NoContent(http.StatusNoContent)
}
