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
	"sync"
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
	// UploadTimeout bounds the upload after one execution (default 10 s):
	// a slow database delays the file list, never the computation.
	UploadTimeout time.Duration
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

// executionFiles remembers, per execute_request, the working directory as
// it was before, so the files it created can be found after.
type executionFiles struct {
	mu       sync.Mutex
	watcher  *storage.Watcher
	before   map[string]storage.Snapshot
	byName   map[string]string // file name → id of its latest upload
	baseURL  string
	disabled bool
}

func (s *Server) recordPermalink(sess *session, code string) string {
	if s.cfg.Storage.Permalinks == nil {
		return ""
	}
	id, err := s.cfg.Storage.Permalinks.Enqueue(storage.Cell{Code: code, Language: sess.spec, Interacts: ""})
	if err != nil {
		sess.logger.Warn().Err(err).Msg("permalink not recorded")
		return ""
	}
	return id
}

// watchFiles starts watching a Sage-cell session's working directory.
func (s *Server) watchFiles(sess *session, baseURL string) {
	if s.cfg.Storage.Files == nil {
		return
	}
	w, err := s.cfg.Storage.Files.Watch(sess.kernel.WorkDir, storage.FileOwner{Session: sess.id, Kernel: sess.spec})
	if err != nil {
		sess.logger.Warn().Err(err).Msg("kernel files will not be uploaded")
		return
	}
	sess.files = &executionFiles{watcher: w, before: map[string]storage.Snapshot{}, byName: map[string]string{}, baseURL: baseURL}
}

// beforeExecute takes the snapshot the upload compares against.
func (f *executionFiles) beforeExecute(msgID string) {
	if f == nil {
		return
	}
	snap, err := f.watcher.Snapshot()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && len(f.before) < 64 {
		f.before[msgID] = snap
	}
}

// afterExecute uploads what the execution wrote and returns the links.
func (f *executionFiles) afterExecute(ctx context.Context, msgID, permalink string) ([]fileLink, []string, error) {
	if f == nil {
		return nil, nil, nil
	}
	f.mu.Lock()
	before, ok := f.before[msgID]
	delete(f.before, msgID)
	f.mu.Unlock()
	if !ok {
		return nil, nil, nil
	}
	report, err := f.watcher.UploadChanged(ctx, before, permalink)
	var links []fileLink
	var notices []string
	for _, up := range report.Files {
		if up.Skipped != "" {
			notices = append(notices, fmt.Sprintf("%s not stored: %s", up.Name, up.Skipped))
			continue
		}
		links = append(links, fileLink{Name: up.Name, Size: up.Size, ContentType: up.ContentType,
			URL: f.baseURL + "files/" + up.ID + "/" + escapePath(up.Name)})
		f.mu.Lock()
		f.byName[up.Name] = up.ID
		f.mu.Unlock()
	}
	if report.Omitted > 0 {
		notices = append(notices, fmt.Sprintf("%d more entries not stored", report.Omitted))
	}
	return links, notices, err
}

func (f *executionFiles) lookup(name string) (string, bool) {
	if f == nil {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.byName[name]
	return id, ok
}

func (f *executionFiles) close() {
	if f != nil {
		_ = f.watcher.Close()
	}
}

func escapePath(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// finishExecution runs when a Sage-cell execution replies: the files it
// wrote are uploaded and announced before the reply, and the reply tells
// the permalink and answers _sagecell_files.
func (s *Server) finishExecution(sess *session, reply *jupytermsg.Message, wantsFiles bool, permalink string) *jupytermsg.Message {
	parent := reply.ParentMsgID()
	var names []string
	if sess.files != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.uploadTimeout())
		began := time.Now()
		links, notices, err := sess.files.afterExecute(ctx, parent, permalink)
		s.metrics.storageLatest.WithLabelValues("upload").Observe(time.Since(began).Seconds())
		cancel()
		if err != nil {
			s.metrics.errors.WithLabelValues("storage").Inc()
			notices = append(notices, "files could not be stored: "+err.Error())
			sess.logger.Warn().Err(err).Msg("upload kernel files")
		}
		for _, l := range links {
			names = append(names, l.Name)
		}
		if len(links) > 0 {
			if m, err := jupytermsg.New(filesMsgType, sess.kernel.Session, nil, map[string]any{"files": links}); err == nil {
				m.ParentHeader = reply.ParentHeader
				sess.log.append(jupytermsg.IOPub, m, "")
			}
		}
		if len(notices) > 0 {
			sess.notice(reply.ParentHeader, strings.Join(notices, "\n"))
		}
	}
	return rewriteReply(reply, permalink, wantsFiles, names)
}

func (s *Server) uploadTimeout() time.Duration {
	if s.cfg.Storage.UploadTimeout > 0 {
		return s.cfg.Storage.UploadTimeout
	}
	return 10 * time.Second
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
		return httpError(c, http.StatusBadRequest, "invalid JSON body: "+err.Error())
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
		} else {
			interacts = "[]"
		}
	}
	id, err := s.cfg.Storage.Permalinks.Enqueue(storage.Cell{Code: code, Language: language, Interacts: interacts})
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, storage.ErrInvalidCell) {
			code = http.StatusBadRequest
		}
		return httpError(c, code, err.Error())
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
	id := c.Param("id")
	if id == "" {
		id = c.QueryParam("q")
	}
	p, err := s.cfg.Storage.Permalinks.Get(c.Request().Context(), id)
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	if err != nil {
		return httpError(c, http.StatusServiceUnavailable, "permalink store unavailable: "+err.Error())
	}
	return c.JSON(http.StatusOK, map[string]string{"code": p.Code, "language": p.Language, "interacts": p.Interacts})
}

// riskyTypes could run script if a browser rendered them on our origin.
var riskyTypes = []string{"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml", "text/javascript", "application/javascript"}

// serveFile is GET /files/{id}/{name}: a file a kernel wrote, from
// storage, with ETag, ranges and long caching (the id names one upload).
func (s *Server) serveFile(c echo.Context) error {
	if s.cfg.Storage.Files == nil {
		return httpError(c, http.StatusNotFound, "file storage is not configured")
	}
	name, err := url.PathUnescape(c.Param("*"))
	if err != nil || !storage.ValidFileName(name) {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	f, err := s.cfg.Storage.Files.OpenFile(c.Request().Context(), c.Param("id"), name)
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	if err != nil {
		return httpError(c, http.StatusServiceUnavailable, "file storage unavailable: "+err.Error())
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
	name, _ := url.PathUnescape(c.Param("*"))
	sess := s.lookup(c.Param("id"))
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	id, ok := sess.files.lookup(name)
	if !ok {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	return c.Redirect(http.StatusFound, "/files/"+id+"/"+escapePath(name))
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
