package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// The Jupyter Server kernelspec API beyond the list: one kernelspec
// (GET /api/kernelspecs/{name}) and its resources, the logos and
// kernel.js/kernel.css that clients show (GET /kernelspecs/{name}/{file}),
// as jupyter_server answers them (services/kernelspecs/handlers.py,
// kernelspecs/handlers.py). Jupyter Server as a gateway client asks for
// both.

// maxResourceBytes bounds a kernelspec resource the gateway serves; a
// larger file is neither listed nor served.
const maxResourceBytes = 4 << 20

// specResources lists a kernelspec's resources as jupyter_server does:
// kernel.js and kernel.css by their names, each logo-* file by its name
// without the extension. The values are file names in the spec's
// directory.
func specResources(dir string) map[string]string {
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		name := e.Name()
		var key string
		switch {
		case name == "kernel.js" || name == "kernel.css":
			key = name
		case strings.HasPrefix(name, "logo-"):
			key = strings.TrimSuffix(name, filepath.Ext(name))
		default:
			continue
		}
		// Stat follows links (Debian's SageMath links its logos).
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !info.Mode().IsRegular() || info.Size() > maxResourceBytes {
			continue
		}
		out[key] = name
	}
	return out
}

// specModelOf is jupyter_server's kernelspec model: the spec without its
// environment (the server's business) and links to its resources.
func (s *Server) specModelOf(c echo.Context, sp jupytermsg.Spec) specModel {
	ks := sp.KernelSpec
	ks.Env = nil
	if ks.Metadata == nil {
		ks.Metadata = json.RawMessage("{}")
	}
	resources := map[string]string{}
	base := s.baseURL(c).Path
	for key, file := range specResources(sp.Dir) {
		resources[key] = base + "kernelspecs/" + url.PathEscape(sp.Name) + "/" + url.PathEscape(file)
	}
	return specModel{Name: sp.Name, Spec: ks, Resources: resources}
}

// apiKernelspec is GET /api/kernelspecs/{name}.
func (s *Server) apiKernelspec(c echo.Context) error {
	name, err := pathParam(c, "name")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such kernel spec")
	}
	sp, ok := s.pool.Specs()[name]
	if !ok {
		return httpError(c, http.StatusNotFound, fmt.Sprintf("Kernel spec %s not found", name))
	}
	return c.JSON(http.StatusOK, s.specModelOf(c, sp))
}

// kernelspecResource is GET /kernelspecs/{name}/{file}: one of the files
// the kernelspec's model lists, and nothing else of its directory.
func (s *Server) kernelspecResource(c echo.Context) error {
	name, err := pathParam(c, "name")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such kernel spec resource")
	}
	file, err := pathParam(c, "file")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such kernel spec resource")
	}
	sp, ok := s.pool.Specs()[name]
	if !ok {
		return httpError(c, http.StatusNotFound, fmt.Sprintf("Kernel spec %s not found", name))
	}
	listed := false
	for _, f := range specResources(sp.Dir) {
		listed = listed || f == file
	}
	if !listed {
		return httpError(c, http.StatusNotFound, fmt.Sprintf("kernel spec %s has no resource %q", name, file))
	}
	f, err := os.Open(filepath.Join(sp.Dir, file))
	if err != nil {
		return httpError(c, http.StatusNotFound, fmt.Sprintf("kernel spec %s has no resource %q", name, file))
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("kernelspec resource: %w", err)
	}
	// Read within the bound whatever the file became since it was listed.
	data, err := io.ReadAll(io.LimitReader(f, maxResourceBytes+1))
	if err != nil {
		return fmt.Errorf("kernelspec resource: %w", err)
	}
	if len(data) > maxResourceBytes {
		return httpError(c, http.StatusNotFound, fmt.Sprintf("kernel spec %s has no resource %q", name, file))
	}
	h := c.Response().Header()
	ctype := mime.TypeByExtension(filepath.Ext(file))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h.Set("Content-Type", ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	// An SVG logo opened by itself runs no script.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; sandbox")
	h.Set("Cache-Control", "public, max-age=3600")
	http.ServeContent(c.Response(), c.Request(), file, info.ModTime(), bytes.NewReader(data))
	return nil
}
