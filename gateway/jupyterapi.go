package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// The Jupyter Server kernel API, as @jupyterlab/services, Thebe and
// Jupyter Server's gateway client use it. Shapes and status codes follow
// jupyter_server (services/kernels/handlers.py, services/sessions) and
// what @jupyterlab/services checks (kernel/restapi.ts, validate.ts).
// "Session" in this API is a notebook (notebooks.go): a name for a
// kernel, not a gateway session.

func (s *Server) jupyterRoutes(e *echo.Echo) {
	api := e.Group("/api", s.requireToken)
	api.GET("", s.apiInfo)
	api.GET("/", s.apiInfo)
	api.GET("/status", s.apiStatus)
	api.GET("/kernelspecs", s.apiKernelspecs)
	api.GET("/kernelspecs/:name", s.apiKernelspec)
	api.GET("/kernels", s.apiListKernels)
	api.POST("/kernels", s.apiStartKernel)
	// A kernel another instance of the cluster owns is forwarded there.
	owned := s.owned(session.Jupyter)
	api.GET("/kernels/:id", s.apiGetKernel, owned)
	api.DELETE("/kernels/:id", s.apiDeleteKernel, owned)
	api.POST("/kernels/:id/interrupt", s.apiInterrupt, owned)
	api.POST("/kernels/:id/restart", s.apiRestart, owned)
	api.GET("/kernels/:id/channels", s.apiChannels, owned)
	api.GET("/sessions", s.apiListSessions)
	api.POST("/sessions", s.apiCreateSession)
	// A notebook lives on the instance that made it, as its kernel did.
	notebook := s.ownedBy("", s.notebooks.has)
	api.GET("/sessions/:id", s.apiGetSession, notebook)
	api.PATCH("/sessions/:id", s.apiPatchSession, notebook)
	api.DELETE("/sessions/:id", s.apiDeleteSession, notebook)
	// Outside /api, as jupyter_server serves them, behind the same token.
	e.GET("/kernelspecs/:name/:file", s.kernelspecResource, s.requireToken)
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
	kernels := s.sessions.count()
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
		specs[name] = s.specModelOf(c, sp)
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

func modelOf(sess *session.Session) kernelModel {
	state, clients, last := sess.Snapshot()
	return kernelModel{ID: sess.ID(), Name: sess.KernelName(), LastActivity: last.UTC().Format("2006-01-02T15:04:05.000000Z"), ExecutionState: state, Connections: clients}
}

// visible reports whether the caller may see a Jupyter-API session. With a
// token the caller is the operator; without one, kernel ids are
// capabilities, so callers only see the kernels their address started.
func (s *Server) visible(c echo.Context, sess *session.Session) bool {
	if sess == nil || sess.API() != session.Jupyter {
		return false
	}
	return s.cfg.Token != "" || sess.Remote() == c.RealIP()
}

// jupyterSession is the Jupyter-API session the route's id names.
func (s *Server) jupyterSession(c echo.Context) *session.Session {
	id, err := pathParam(c, "id")
	if err != nil {
		return nil
	}
	return s.jupyterKernel(c, id)
}

// jupyterKernel is the Jupyter-API session id, if the caller may see it.
func (s *Server) jupyterKernel(c echo.Context, id string) *session.Session {
	if sess := s.sessions.getAPI(id, session.Jupyter); s.visible(c, sess) {
		return sess
	}
	return nil
}

func (s *Server) apiListKernels(c echo.Context) error {
	models := []kernelModel{}
	for _, sess := range s.sessions.all() {
		if s.visible(c, sess) {
			models = append(models, modelOf(sess))
		}
	}
	sort.Slice(models, func(i, j int) bool { return models[i].ID < models[j].ID })
	if others := s.fromPeers(c); others != nil {
		// A cluster: the other instances' kernels too.
		return c.JSON(http.StatusOK, append(rawList(models), others...))
	}
	return c.JSON(http.StatusOK, models)
}

// startJupyterKernel starts a kernel with the Jupyter API's lifetime.
func (s *Server) startJupyterKernel(c echo.Context, asked string) (*session.Session, error) {
	kernelName, err := s.resolveKernel(asked)
	if err != nil {
		return nil, err
	}
	life := session.Lifetime{Idle: s.cfg.JupyterIdleTimeout, MaxIdle: max(s.cfg.JupyterIdleTimeout, s.cfg.MaxTimeout), Lifespan: s.cfg.MaxLifespan}
	return s.startSession(c.Request().Context(), kernelChoice{Kernel: kernelName}, session.Jupyter, c.RealIP(), "", "", life)
}

func (s *Server) apiStartKernel(c echo.Context) error {
	// The client's "env" is ignored: kernels get the sandbox's environment.
	var body struct {
		Name string `json:"name"`
	}
	raw := s.keepBody(c)
	if c.Request().ContentLength != 0 {
		if err := json.NewDecoder(c.Request().Body).Decode(&body); err != nil {
			return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		}
	}
	if name, err := s.resolveKernel(body.Name); err == nil && s.placeElsewhere(c, name, raw) {
		return nil
	}
	sess, err := s.startJupyterKernel(c, body.Name)
	if err != nil {
		return answerError(c, err)
	}
	c.Response().Header().Set("Location", "/api/kernels/"+sess.ID())
	return c.JSON(http.StatusCreated, modelOf(sess))
}

func (s *Server) apiGetKernel(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	return c.JSON(http.StatusOK, modelOf(sess))
}

func (s *Server) apiDeleteKernel(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	sess.End(session.EndDeleted)
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
	if err := sess.Kernel().Restart(ctx); err != nil {
		return fmt.Errorf("restart kernel %s: %w", sess.ID(), err)
	}
	sess.Restarted()
	return c.JSON(http.StatusOK, modelOf(sess))
}

func (s *Server) apiChannels(c echo.Context) error {
	sess := s.jupyterSession(c)
	if sess == nil {
		return s.endedChannels(c, session.Jupyter, jupyterCodec{})
	}
	return s.bridge(c, sess, jupyterCodec{})
}

func notebookModel(ns notebook, sess *session.Session) map[string]any {
	return map[string]any{"id": ns.ID, "path": ns.Path, "name": ns.Name, "type": ns.Type, "kernel": modelOf(sess), "notebook": map[string]string{"path": ns.Path, "name": ns.Name}}
}

// liveNotebooks returns the sessions the caller may see.
func (s *Server) liveNotebooks(c echo.Context) []map[string]any {
	out := []map[string]any{}
	for _, ns := range s.notebooks.all() {
		if sess := s.jupyterKernel(c, ns.kernelID); sess != nil {
			out = append(out, notebookModel(ns, sess))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i]["id"].(string) < out[j]["id"].(string) })
	return out
}

func (s *Server) apiListSessions(c echo.Context) error {
	if others := s.fromPeers(c); others != nil {
		// A cluster: the other instances' notebooks too.
		return c.JSON(http.StatusOK, append(rawList(s.liveNotebooks(c)), others...))
	}
	return c.JSON(http.StatusOK, s.liveNotebooks(c))
}

func (s *Server) apiCreateSession(c echo.Context) error {
	raw := s.keepBody(c)
	req, err := decodeNotebookRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	ns := notebook{ID: uuid.NewString(), Type: "notebook"}
	req.applyTo(&ns)
	if ns.Path != "" && (req.Kernel == nil || req.Kernel.ID == "") {
		// jupyter_server answers a session for a path that has one with
		// that session, rather than starting another kernel.
		for _, old := range s.notebooks.all() {
			if old.Path == ns.Path && old.Type == ns.Type {
				if sess := s.jupyterKernel(c, old.kernelID); sess != nil {
					c.Response().Header().Set("Location", "/api/sessions/"+old.ID)
					return c.JSON(http.StatusCreated, notebookModel(old, sess))
				}
			}
		}
	}
	var sess *session.Session
	started := false
	if req.Kernel != nil && req.Kernel.ID != "" {
		if sess = s.jupyterKernel(c, req.Kernel.ID); sess == nil {
			if s.forwardToOwner(c, req.Kernel.ID, raw) {
				return nil
			}
			return httpError(c, http.StatusBadRequest, "no such kernel "+req.Kernel.ID)
		}
	} else {
		name := ""
		if req.Kernel != nil {
			name = req.Kernel.Name
		}
		if kernel, err := s.resolveKernel(name); err == nil && s.placeElsewhere(c, kernel, raw) {
			return nil
		}
		if sess, err = s.startJupyterKernel(c, name); err != nil {
			return answerError(c, err)
		}
		started = true
	}
	ns.kernelID = sess.ID()
	id := ns.ID
	ns, err = s.notebooks.add(ns)
	if err == nil && ns.ID == id {
		// A new one: other instances forward its requests here.
		if err = s.claimID(c.Request().Context(), ns.ID, ""); err != nil {
			s.notebooks.remove(ns.ID)
			err = fmt.Errorf("%w: the cluster registry: %w", errCapacity, err)
		}
	}
	if err != nil {
		if started {
			sess.End(session.EndDeleted)
		}
		return answerError(c, err)
	}
	c.Response().Header().Set("Location", "/api/sessions/"+ns.ID)
	return c.JSON(http.StatusCreated, notebookModel(ns, sess))
}

// findNotebook returns a visible session and its kernel.
func (s *Server) findNotebook(c echo.Context) (notebook, *session.Session) {
	ns, ok := s.notebooks.get(c.Param("id"))
	if !ok {
		return ns, nil
	}
	return ns, s.jupyterKernel(c, ns.kernelID)
}

func (s *Server) apiGetSession(c echo.Context) error {
	ns, sess := s.findNotebook(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	return c.JSON(http.StatusOK, notebookModel(ns, sess))
}

func (s *Server) apiPatchSession(c echo.Context) error {
	ns, sess := s.findNotebook(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	req, err := decodeNotebookRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	next, started := sess, false
	if req.Kernel != nil {
		if req.Kernel.ID != "" {
			if next = s.jupyterKernel(c, req.Kernel.ID); next == nil {
				return httpError(c, http.StatusBadRequest, s.noKernelHere(c, req.Kernel.ID))
			}
		} else {
			if next, err = s.startJupyterKernel(c, req.Kernel.Name); err != nil {
				return answerError(c, err)
			}
			started = true
		}
	}
	updated, ok := s.notebooks.update(ns.ID, req, next.ID())
	if !ok {
		// Deleted meanwhile: a kernel started for it has no one to use it.
		if started {
			next.End(session.EndDeleted)
		}
		return httpError(c, http.StatusNotFound, "no such session")
	}
	// The old kernel ends only once this session has moved off it: its end
	// hooks forget every notebook session still on it.
	if next != sess {
		sess.End(session.EndDeleted)
	}
	return c.JSON(http.StatusOK, notebookModel(updated, next))
}

// noKernelHere says why a notebook cannot move to kernel id: nobody
// holds it, or another instance of the cluster does (a notebook stays
// where it was made; a new one can be made for that kernel, and lives
// with it).
func (s *Server) noKernelHere(c echo.Context, id string) string {
	if s.cfg.Cluster != nil && !s.forwarded(c) {
		if loc, err := s.cfg.Cluster.Locate(c.Request().Context(), id); err == nil && loc.Owner != nil {
			return fmt.Sprintf("kernel %s runs on another instance of this cluster (%s): a session can move only to a kernel of the instance it was made on; create a new session (POST /api/sessions) for that kernel instead", id, loc.Owner.ID)
		}
	}
	return "no such kernel " + id
}

func (s *Server) apiDeleteSession(c echo.Context) error {
	ns, sess := s.findNotebook(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such session")
	}
	if s.notebooks.remove(ns.ID) {
		s.releaseID(ns.ID, session.EndDeleted)
	}
	sess.End(session.EndDeleted)
	return c.NoContent(http.StatusNoContent)
}
