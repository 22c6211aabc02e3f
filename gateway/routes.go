package gateway

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// routes is every route the gateway serves, in one table.
func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	if s.cfg.TrustProxy {
		e.IPExtractor = echo.ExtractIPFromXFFHeader()
	} else {
		// Client caps count addresses; a spoofable header would void them.
		e.IPExtractor = echo.ExtractIPDirect()
	}
	if s.cfg.Cluster != nil {
		// First of all: a request signed by another instance is checked
		// (403 when the signature fails), and its client address is the
		// one that instance vouches for.
		e.Pre(echo.WrapMiddleware(s.cfg.Cluster.Middleware))
		id := s.cfg.Cluster.ID()
		e.Pre(func(next echo.HandlerFunc) echo.HandlerFunc {
			return func(c echo.Context) error {
				c.Response().Header().Add(InstanceHeader, id)
				return next(c)
			}
		})
		e.IPExtractor = clusterIP(s.cfg.Cluster, e.IPExtractor)
	}
	e.Use(middleware.RequestID())
	e.Use(middleware.Recover())
	e.Use(middleware.BodyLimit(strconv.FormatInt(s.cfg.MaxMessageBytes, 10)))
	// The Sage cell's front end sends credentialed requests (cookies,
	// withCredentials): they are answered with the request's own origin,
	// when allowed, and Access-Control-Allow-Credentials, never with "*"
	// (which browsers refuse with credentials). cellgate has no cookies or
	// HTTP auth of its own (the Jupyter API's token is a header or a query
	// parameter, which CORS credentials do not carry), so this shows an
	// allowed page nothing it could not read without credentials.
	cors := middleware.CORSConfig{
		AllowOrigins:     s.cfg.AllowOrigins,
		AllowCredentials: true,
		AllowHeaders:     []string{"Content-Type", "Authorization", "X-Requested-With"},
		ExposeHeaders:    []string{"Jupyter-Kernel-ID", "Retry-After", "Location"},
		AllowMethods:     []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodOptions},
	}
	// With "*", the request's origin is echoed instead (see above).
	cors.UnsafeWildcardOriginWithAllowCredentials = slices.Contains(s.cfg.AllowOrigins, "*")
	e.Use(middleware.CORSWithConfig(cors))
	// After CORS, which answers preflights: a browser page's request
	// that changes state must come from an allowed origin.
	e.Use(s.refuseForeignOrigins)

	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", s.metrics.handler())

	// Sage Cell Server API. A route that names a session serves it here,
	// or forwards it to the instance of the cluster that owns it (owned).
	sage := s.owned(session.SageCell)
	e.POST("/kernel", s.createSageKernel)
	e.DELETE("/kernel/:id", s.deleteSageKernel, sage)
	e.POST("/kernel/:id", s.deleteSageKernel, sage)
	e.POST("/kernel/:id/interrupt", s.interruptSageKernel, sage)
	e.GET("/kernel/:id/channels", s.sageChannels, sage)
	e.GET("/kernel/:id/poll", s.pollReceive, sage)
	e.POST("/kernel/:id/poll", s.pollSend, sage)
	e.POST("/service", s.service)
	e.GET("/kernelspecs", s.publicKernelspecs)
	e.POST("/permalink", s.createPermalink)
	e.GET("/permalink", s.getPermalink)
	e.GET("/permalink/:id", s.getPermalink)
	e.GET("/permalink/:id/outputs", s.permalinkOutputs)
	e.GET("/permalink/:id/image.png", s.permalinkImage)
	e.GET("/oembed", s.oembed)
	e.DELETE("/permalink/:id", s.deletePermalink, s.requireOperator)
	e.GET("/files/:id/*", s.serveFile)
	e.GET("/kernel/:id/files/*", s.sessionFile, sage)
	e.POST("/tos.html", s.tos)
	e.GET("/tos.html", s.tos)

	s.sockjsRoutes(e)
	s.jupyterRoutes(e)
	return e
}

// originAllowed applies the CORS origin list to what browsers do not
// preflight: websocket upgrades, form POSTs and GETs (refuseForeignOrigins).
// A page served by this host itself is allowed.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || slices.Contains(s.cfg.AllowOrigins, "*") {
		return true
	}
	return slices.Contains(s.cfg.AllowOrigins, origin) || sameHost(origin, r.Host)
}

func sameHost(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host == host
}

// readyz answers 200 when the server can serve a new session: the pool
// has warmed once, every pool that should keep kernels has one ready or
// is starting one (a pool momentarily all leased is refilling, not
// broken), and the database answers. A pool with nothing ready and
// nothing starting is at its cap or failing to start kernels.
func (s *Server) readyz(c echo.Context) error {
	pools := s.poolStatus()
	body := map[string]any{"pools": pools}
	if s.pool.Warm() {
		s.everWarm.Store(true)
	}
	ready := s.everWarm.Load()
	if s.sessions.isDraining() {
		// Shutting down: the balancer sends new sessions elsewhere at once.
		ready = false
		body["draining"] = true
	}
	for _, p := range pools {
		if p.Want > 0 && p.Ready == 0 && p.Starting == 0 {
			ready = false
		}
	}
	if ping := s.cfg.Storage.Ping; ping != nil {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		began := time.Now()
		err := ping(ctx)
		s.metrics.session.Storage.WithLabelValues("ping").Observe(time.Since(began).Seconds())
		if err != nil {
			ready = false
			body["storage"] = "unavailable: " + err.Error()
		} else {
			body["storage"] = "ok"
		}
	}
	if s.cfg.KernelStarts != nil {
		body["kernel_starts"] = s.cfg.KernelStarts()
	}
	body["ready"] = ready
	if !ready {
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	return c.JSON(http.StatusOK, body)
}

type poolStatus struct {
	Name     string `json:"name"`
	Want     int    `json:"want"`
	Ready    int    `json:"ready"`
	Starting int    `json:"starting"`
	Leased   int    `json:"leased"`
	Waiting  int    `json:"waiting"`
	LastErr  string `json:"last_error,omitempty"`
}

func (s *Server) poolStatus() []poolStatus {
	var out []poolStatus
	for _, st := range s.pool.Stats() {
		ps := poolStatus{Name: st.Name, Want: st.Want, Ready: st.Ready, Starting: st.Starting, Leased: st.Leased, Waiting: st.Waiting}
		if st.LastErr != nil {
			ps.LastErr = st.LastErr.Error()
		}
		out = append(out, ps)
	}
	return out
}

// publicKernel is what the web client's language picker needs.
type publicKernel struct {
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	Language    string `json:"language"`
}

// publicKernelspecs is GET /kernelspecs: the installed kernels, without
// the Jupyter API's token, for embedding pages.
func (s *Server) publicKernelspecs(c echo.Context) error {
	specs := s.pool.Specs()
	out := struct {
		Default string         `json:"default"`
		Kernels []publicKernel `json:"kernels"`
		// SageLanguages are the Sage cell's other languages this server
		// runs through its Sage kernel (ask for them by name).
		SageLanguages []string `json:"sage_languages"`
	}{Default: s.cfg.DefaultKernel, Kernels: []publicKernel{}, SageLanguages: s.availableSageLanguages()}
	for _, name := range jupytermsg.SortedNames(specs) {
		out.Kernels = append(out.Kernels, publicKernel{Name: name, DisplayName: specs[name].DisplayName, Language: specs[name].Language})
	}
	return c.JSON(http.StatusOK, out)
}
