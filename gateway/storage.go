package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/storage"
)

// PermalinkStore is what the gateway needs for permalinks: a write-behind
// store that answers with an id at once.
type PermalinkStore interface {
	Enqueue(cell storage.Cell) (string, error)
	Get(ctx context.Context, id string) (storage.Permalink, error)
}

// FileStore is what the gateway needs for the files kernels write.
type FileStore interface {
	Watch(dir string, owner storage.FileOwner) (*storage.Watcher, error)
	OpenFile(ctx context.Context, id, name string) (*storage.FileReader, error)
}

// Storage is the gateway's optional storage; nil fields disable a feature.
type Storage struct {
	Permalinks PermalinkStore
	Files      FileStore
	// Ping tells /readyz whether the database answers.
	Ping func(context.Context) error
	// UploadTimeout bounds the upload after one execution (default 10 s).
	UploadTimeout time.Duration
	// ReplyHold is how long an execute_reply waits for its files to be
	// stored (default 3 s); files stored later are announced when they
	// land. A slow database delays the file list, never the computation.
	ReplyHold time.Duration
}

// filesMsgType announces the files an execution wrote (iopub, parent =
// the execute_request).
const filesMsgType = "cellgate.files"

// fileLink is one entry of a cellgate.files message.
type fileLink struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
}

// noInteracts is how a cell without interact state is stored, whichever
// way it came: the same cell must get the same permalink id.
const noInteracts = "[]"

func (s *Server) recordPermalink(sess *session, code string) string {
	if s.cfg.Storage.Permalinks == nil {
		return ""
	}
	id, err := s.enqueuePermalink(storage.Cell{Code: code, Language: sess.spec, Interacts: noInteracts})
	if err != nil {
		sess.logger.Warn().Err(err).Msg("permalink not recorded")
		return ""
	}
	return id
}

// enqueuePermalink saves a cell, timing it for the storage metrics.
func (s *Server) enqueuePermalink(cell storage.Cell) (string, error) {
	began := time.Now()
	id, err := s.cfg.Storage.Permalinks.Enqueue(cell)
	s.metrics.storage.WithLabelValues("permalink_save").Observe(time.Since(began).Seconds())
	if err != nil {
		return "", fmt.Errorf("save permalink: %w", err)
	}
	return id, nil
}

func escapePath(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// rewriteReply adds metadata.cellgate.permalink and the _sagecell_files
// user expression (a Python-readable list of the new file names).
func rewriteReply(m *jupytermsg.Message, permalink string, wantsFiles bool, names []string) *jupytermsg.Message {
	if permalink == "" && !wantsFiles {
		return m
	}
	copied := *m
	if permalink != "" {
		var meta map[string]json.RawMessage
		if json.Unmarshal(m.Metadata, &meta) == nil {
			if meta == nil {
				meta = map[string]json.RawMessage{}
			}
			meta["cellgate"], _ = json.Marshal(map[string]string{"permalink": permalink})
			if raw, err := json.Marshal(meta); err == nil {
				copied.Metadata = raw
			}
		}
	}
	if wantsFiles {
		var content map[string]json.RawMessage
		if json.Unmarshal(m.Content, &content) == nil {
			var exprs map[string]json.RawMessage
			_ = json.Unmarshal(content["user_expressions"], &exprs)
			if exprs == nil {
				exprs = map[string]json.RawMessage{}
			}
			if names == nil {
				names = []string{}
			}
			list, _ := json.Marshal(names)
			exprs[filesRequest], _ = json.Marshal(map[string]any{"status": "ok", "data": map[string]string{"text/plain": string(list)}, "metadata": map[string]any{}})
			content["user_expressions"], _ = json.Marshal(exprs)
			if raw, err := json.Marshal(content); err == nil {
				copied.Content = raw
			}
		}
	}
	return &copied
}

// createPermalink is POST /permalink (form or JSON: code, language,
// interacts, n), as the Sage Cell Server answers it.
func (s *Server) createPermalink(c echo.Context) error {
	if s.cfg.Storage.Permalinks == nil {
		return httpError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	body, err := formOrJSON(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	code := param(c, body, "code")
	if code == "" {
		return httpError(c, http.StatusBadRequest, "missing code")
	}
	language := param(c, body, "language")
	if language == "" {
		language = s.cfg.DefaultKernel
	}
	interacts := param(c, body, "interacts")
	if interacts == "" {
		if raw, ok := body["interacts"]; ok && raw != nil {
			b, _ := json.Marshal(raw)
			interacts = string(b)
		}
	}
	if interacts == "" {
		interacts = noInteracts
	}
	id, err := s.enqueuePermalink(storage.Cell{Code: code, Language: language, Interacts: interacts})
	if errors.Is(err, storage.ErrInvalidCell) {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	if err != nil {
		s.log.Warn().Err(err).Msg("permalink not saved")
		return httpError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	n := param(c, body, "n")
	nValue := any(n)
	if i, err := strconv.Atoi(n); err == nil {
		nValue = i
	}
	return c.JSON(http.StatusOK, map[string]any{"query": id, "zip": storage.ZipEncode(code), "interacts": interacts, "n": nValue})
}

// getPermalink is GET /permalink?q=ID and GET /permalink/ID.
func (s *Server) getPermalink(c echo.Context) error {
	if s.cfg.Storage.Permalinks == nil {
		return httpError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	id, err := pathParam(c, "id")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	if id == "" {
		id = c.QueryParam("q")
	}
	began := time.Now()
	p, err := s.cfg.Storage.Permalinks.Get(c.Request().Context(), id)
	s.metrics.storage.WithLabelValues("permalink_lookup").Observe(time.Since(began).Seconds())
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	if err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("permalink lookup failed")
		return httpError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	return c.JSON(http.StatusOK, map[string]string{"code": p.Code, "language": p.Language, "interacts": p.Interacts})
}

// pathParam returns a path parameter decoded exactly once. echo matches
// on the raw path when the request has one (then parameters are still
// escaped), and on the decoded path otherwise.
func pathParam(c echo.Context, name string) (string, error) {
	v := c.Param(name)
	if c.Request().URL.RawPath == "" {
		return v, nil
	}
	u, err := url.PathUnescape(v)
	if err != nil {
		return "", fmt.Errorf("path parameter %s: %w", name, err)
	}
	return u, nil
}

// riskyTypes could run script if a browser rendered them on our origin.
var riskyTypes = []string{"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml", "text/javascript", "application/javascript"}

// serveFile is GET /files/{id}/{name}: a file a kernel wrote, from
// storage, with ETag, ranges and long caching (the id names one upload).
func (s *Server) serveFile(c echo.Context) error {
	if s.cfg.Storage.Files == nil {
		return httpError(c, http.StatusNotFound, "file storage is not configured")
	}
	id, err := pathParam(c, "id")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	name, err := pathParam(c, "*")
	if err != nil || !storage.ValidFileName(name) {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	began := time.Now()
	f, err := s.cfg.Storage.Files.OpenFile(c.Request().Context(), id, name)
	s.metrics.storage.WithLabelValues("file_open").Observe(time.Since(began).Seconds())
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	if err != nil {
		s.log.Warn().Err(err).Str("file", id).Msg("file lookup failed")
		return httpError(c, http.StatusServiceUnavailable, "file storage is unavailable")
	}
	defer f.Close()
	h := c.Response().Header()
	h.Set("Content-Type", f.Info.ContentType)
	h.Set("ETag", `"`+f.Info.SHA256+`"`)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("X-Content-Type-Options", "nosniff")
	// Kernel files are untrusted: nothing in them may act on this origin.
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'")
	for _, t := range riskyTypes {
		if strings.HasPrefix(f.Info.ContentType, t) {
			h.Set("Content-Disposition", `attachment; filename="`+strings.ReplaceAll(path.Base(name), `"`, "")+`"`)
		}
	}
	http.ServeContent(c.Response(), c.Request(), path.Base(name), f.Info.UploadDate, f)
	return nil
}

// sessionFile is GET /kernel/{id}/files/{name}, where Sage-cell clients
// look for the files named in _sagecell_files.
func (s *Server) sessionFile(c echo.Context) error {
	sess := s.sageSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	name, err := pathParam(c, "*")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	id, ok := sess.files.lookup(name)
	if !ok {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	return c.Redirect(http.StatusFound, "/files/"+url.PathEscape(id)+"/"+escapePath(name))
}

// PermalinkDropped tells the clients of the session that used a permalink
// id that it could not be stored after all.
func (s *Server) PermalinkDropped(id string, err error) {
	s.mu.Lock()
	var owner *session
	for _, sess := range s.sessions {
		if sess.issued(id) {
			owner = sess
			break
		}
	}
	s.mu.Unlock()
	s.log.Warn().Str("permalink", id).Err(err).Msg("permalink dropped")
	if owner != nil {
		owner.notice(nil, fmt.Sprintf("permalink %s could not be saved: %v", id, err))
	}
}
