package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
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

func (s *Server) jupyterSession(c echo.Context) *session {
	sess := s.lookup(c.Param("id"))
	if !s.visible(c, sess) {
		return nil
	}
	return sess
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
		return httpError(c, http.StatusInternalServerError, "restart failed: "+err.Error())
	}
	sess.touch()
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
	ID       string `json:"id"`
	Path     string `json:"path"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	kernelID string
}

type notebookSessions struct {
	mu   sync.Mutex
	byID map[string]*notebookSession
}

func (s *Server) sessionModel(ns notebookSession, sess *session) map[string]any {
	return map[string]any{"id": ns.ID, "path": ns.Path, "name": ns.Name, "type": ns.Type, "kernel": sess.model(), "notebook": map[string]string{"path": ns.Path, "name": ns.Name}}
}

// liveNotebookSessions drops sessions whose kernel has ended and returns
// the rest the caller may see.
func (s *Server) liveNotebookSessions(c echo.Context) []map[string]any {
	s.nbs.mu.Lock()
	defer s.nbs.mu.Unlock()
	out := []map[string]any{}
	for id, ns := range s.nbs.byID {
		sess := s.lookup(ns.kernelID)
		if sess == nil {
			delete(s.nbs.byID, id)
			continue
		}
		if s.visible(c, sess) {
			out = append(out, s.sessionModel(*ns, sess))
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

func (s *Server) apiCreateSession(c echo.Context) error {
	var req sessionRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
	}
	ns := &notebookSession{ID: uuid.NewString(), Type: "notebook"}
	if req.Path != nil {
		ns.Path = *req.Path
	}
	if req.Name != nil {
		ns.Name = *req.Name
	}
	if req.Type != nil {
		ns.Type = *req.Type
	}
	var sess *session
	if req.Kernel != nil && req.Kernel.ID != "" {
		sess = s.lookup(req.Kernel.ID)
		if !s.visible(c, sess) {
			return httpError(c, http.StatusBadRequest, "no such kernel "+req.Kernel.ID)
		}
	} else {
		name := ""
		if req.Kernel != nil {
			name = req.Kernel.Name
		}
		var err error
		if sess, err = s.startJupyterKernel(c, name); err != nil {
			return sessionError(c, err)
		}
	}
	ns.kernelID = sess.id
	s.nbs.mu.Lock()
	if s.nbs.byID == nil {
		s.nbs.byID = map[string]*notebookSession{}
	}
	s.nbs.byID[ns.ID] = ns
	s.nbs.mu.Unlock()
	c.Response().Header().Set("Location", "/api/sessions/"+ns.ID)
	return c.JSON(http.StatusCreated, s.sessionModel(*ns, sess))
}

// notebookSession returns a visible session and its kernel.
func (s *Server) findNotebookSession(c echo.Context) (*notebookSession, *session) {
	s.nbs.mu.Lock()
	ns := s.nbs.byID[c.Param("id")]
	s.nbs.mu.Unlock()
	if ns == nil {
		return nil, nil
	}
	sess := s.lookup(ns.kernelID)
	if !s.visible(c, sess) {
		return nil, nil
	}
	return ns, sess
}

func (s *Server) apiGetSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if ns == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	return c.JSON(http.StatusOK, s.sessionModel(*ns, sess))
}

func (s *Server) apiPatchSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if ns == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	var req sessionRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
	}
	if req.Kernel != nil {
		var next *session
		var err error
		if req.Kernel.ID != "" {
			if next = s.lookup(req.Kernel.ID); !s.visible(c, next) {
				return httpError(c, http.StatusBadRequest, "no such kernel "+req.Kernel.ID)
			}
		} else if next, err = s.startJupyterKernel(c, req.Kernel.Name); err != nil {
			return sessionError(c, err)
		}
		if next != sess {
			sess.end(endDeleted)
			sess = next
		}
	}
	s.nbs.mu.Lock()
	if req.Path != nil {
		ns.Path = *req.Path
	}
	if req.Name != nil {
		ns.Name = *req.Name
	}
	if req.Type != nil {
		ns.Type = *req.Type
	}
	ns.kernelID = sess.id
	model := s.sessionModel(*ns, sess)
	s.nbs.mu.Unlock()
	return c.JSON(http.StatusOK, model)
}

func (s *Server) apiDeleteSession(c echo.Context) error {
	ns, sess := s.findNotebookSession(c)
	if ns == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	s.nbs.mu.Lock()
	delete(s.nbs.byID, ns.ID)
	s.nbs.mu.Unlock()
	sess.end(endDeleted)
	return c.NoContent(http.StatusNoContent)
}
