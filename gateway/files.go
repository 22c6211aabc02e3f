package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/storage"
)

// FileStore is what the gateway needs for the files kernels write.
type FileStore interface {
	Watch(dir string, owner storage.FileOwner) (*storage.Watcher, error)
	OpenFile(ctx context.Context, id, name string) (*storage.FileReader, error)
	ByPermalink(ctx context.Context, permalink string, since time.Time) ([]storage.FileInfo, error)
	// PutBytes keeps a stored result's large image.
	PutBytes(ctx context.Context, name, contentType string, data []byte, owner storage.FileOwner, permalink string) (storage.UploadedFile, error)
}

// fileURL is the one way a link to a stored file is built: the server's
// base URL (with its path, when --public-url has one) and files/ID/NAME.
func fileURL(baseURL, id, name string) string {
	return baseURL + "files/" + url.PathEscape(id) + "/" + escapePath(name)
}

func escapePath(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
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
	s.metrics.session.Storage.WithLabelValues("file_open").Observe(time.Since(began).Seconds())
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
// look for the files named in _sagecell_files: a redirect to the file's
// stored upload.
func (s *Server) sessionFile(c echo.Context) error {
	sess := s.sageSession(c)
	if sess == nil {
		return httpError(c, http.StatusNotFound, "no such kernel")
	}
	name, err := pathParam(c, "*")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	id, ok := sess.FileID(name)
	if !ok {
		return httpError(c, http.StatusNotFound, "no such file")
	}
	return c.Redirect(http.StatusFound, fileURL(s.baseURL(c).String(), id, name))
}
