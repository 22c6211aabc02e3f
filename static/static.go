// Package static serves cellgate's browser client: the embed script
// (/static/embed.js, and /embedded_sagecell.js for pages written for the
// Sage Cell Server), its stylesheet and fonts, the demo page at /, and what
// Sage-cell pages link to (/help.html, /static/jquery.min.js,
// /static/sagecell_embed.css and /static/sagecell.css, which are embed.css,
// and /static/spinner.gif).
//
// The files are bundled from src/ by scripts/web-build.sh (npm ci and
// esbuild) into dist/, and embedded into the binary. Without a build, the
// handler answers 503 with a hint instead of the client.
package static

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

//go:embed all:dist
var dist embed.FS

// notBuilt is the answer when dist/ holds only its placeholder.
const notBuilt = "cellgate's browser client is not built: run `make build` (scripts/web-build.sh bundles static/ with npm and esbuild)\n"

// asset is one file, with its validators and a lazily gzipped copy.
type asset struct {
	name    string
	data    []byte
	ctype   string
	etag    string
	cache   string
	gzOnce  sync.Once
	gzipped []byte
}

func (a *asset) gz() []byte {
	a.gzOnce.Do(func() {
		if !compressible(a.ctype) || len(a.data) < 1024 {
			return
		}
		var buf bytes.Buffer
		w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = w.Write(a.data)
		if w.Close() == nil && buf.Len() < len(a.data) {
			a.gzipped = buf.Bytes()
		}
	})
	return a.gzipped
}

func compressible(ctype string) bool {
	return strings.HasPrefix(ctype, "text/") || strings.Contains(ctype, "javascript") || strings.Contains(ctype, "json") || strings.Contains(ctype, "svg")
}

// Client serves the browser client.
type Client struct {
	files   map[string]*asset // by URL path
	built   bool
	started time.Time
	// meta describes the page / for a shared cell's link (nil: never).
	meta func(*http.Request) (Meta, bool)
}

// Meta is what the page / says about the shared cell it opens (?q=ID) to
// link previews (Open Graph) and oEmbed consumers.
type Meta struct {
	Title       string
	Description string
	URL         string
	Image       string
	OEmbed      string
}

// tags are Meta as the page's head carries it: every value HTML-escaped.
func (m Meta) tags() string {
	var b strings.Builder
	prop := func(name, value string) {
		if value != "" {
			fmt.Fprintf(&b, "<meta property=\"%s\" content=\"%s\">\n", name, html.EscapeString(value))
		}
	}
	prop("og:type", "website")
	prop("og:site_name", "cellgate")
	prop("og:title", m.Title)
	prop("og:description", m.Description)
	prop("og:url", m.URL)
	prop("og:image", m.Image)
	card := "summary"
	if m.Image != "" {
		card = "summary_large_image"
	}
	fmt.Fprintf(&b, "<meta name=\"twitter:card\" content=\"%s\">\n", card)
	if m.Description != "" {
		fmt.Fprintf(&b, "<meta name=\"description\" content=\"%s\">\n", html.EscapeString(m.Description))
	}
	if m.OEmbed != "" {
		fmt.Fprintf(&b, "<link rel=\"alternate\" type=\"application/json+oembed\" href=\"%s\" title=\"%s\">\n", html.EscapeString(m.OEmbed), html.EscapeString(m.Title))
	}
	return b.String()
}

// withMeta is the page with m in its head and title.
func withMeta(page []byte, m Meta) []byte {
	s := string(page)
	if m.Title != "" {
		s = strings.Replace(s, "<title>cellgate</title>", "<title>"+html.EscapeString(m.Title)+" · cellgate</title>", 1)
	}
	return []byte(strings.Replace(s, "</head>", m.tags()+"</head>", 1))
}

// New loads the embedded client.
func New() *Client {
	c := &Client{files: map[string]*asset{}, started: time.Now()}
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		return c
	}
	_ = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || name == "README" || name == "VERSION" {
			return nil
		}
		data, err := fs.ReadFile(sub, name)
		if err != nil {
			return nil
		}
		sum := sha256.Sum256(data)
		a := &asset{name: name, data: data, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		a.ctype = mime.TypeByExtension(path.Ext(name))
		switch path.Ext(name) {
		case ".js":
			a.ctype = "text/javascript; charset=utf-8"
		case ".woff2":
			a.ctype = "font/woff2"
		case "":
			a.ctype = "application/octet-stream"
		}
		switch {
		case name == "index.html" || name == "help.html":
			a.cache = "no-cache"
		case strings.HasPrefix(name, "fonts/"):
			// Font names carry a hash of their bytes.
			a.cache = "public, max-age=31536000, immutable"
		default:
			a.cache = "public, max-age=300"
		}
		switch name {
		case "index.html":
			c.files["/"] = a
		case "help.html":
			c.files["/help.html"] = a
		default:
			c.files["/static/"+name] = a
		}
		// Where pages written for the Sage cell look for them.
		switch name {
		case "embedded_sagecell.js":
			c.files["/embedded_sagecell.js"] = a
		case "embed.css":
			c.files["/static/sagecell_embed.css"] = a
			c.files["/static/sagecell.css"] = a
		}
		return nil
	})
	_, c.built = c.files["/static/embed.js"]
	return c
}

// Built reports whether the bundle was built before the binary.
func (c *Client) Built() bool { return c.built }

// Owns reports whether a request path is the client's.
func Owns(p string) bool {
	return p == "/" || p == "/index.html" || p == "/help.html" || p == "/embedded_sagecell.js" || strings.HasPrefix(p, "/static/")
}

// ServeHTTP serves /, /static/* and /embedded_sagecell.js.
func (c *Client) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	p := r.URL.Path
	if p == "/index.html" {
		p = "/"
	}
	if strings.HasPrefix(p, "/static/") || p == "/embedded_sagecell.js" {
		// Fonts are fetched with CORS by pages that embed cells. The files
		// are public: any page may read them, with credentials too (as the
		// Sage cell's front end asks), which needs its own origin, not "*".
		if origin := r.Header.Get("Origin"); origin != "" {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
		} else {
			h.Set("Access-Control-Allow-Origin", "*")
		}
		h.Add("Vary", "Origin")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if r.Method == http.MethodOptions {
			h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Allow", "GET, HEAD, OPTIONS")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	a, ok := c.files[p]
	if !ok {
		if !c.built {
			http.Error(w, notBuilt, http.StatusServiceUnavailable)
			return
		}
		http.NotFound(w, r)
		return
	}
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", a.cache)
	h.Set("ETag", a.etag)
	if p == "/" {
		h.Set("Referrer-Policy", "no-referrer")
	}
	h.Add("Vary", "Accept-Encoding")
	if p == "/" && c.meta != nil && r.URL.Query().Get("q") != "" {
		if m, ok := c.meta(r); ok {
			// A page of its own: no ETag of the plain page, no cached gzip.
			h.Del("ETag")
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(withMeta(a.data, m)))
			return
		}
	}
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatch(match, a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.data
	if acceptsGzip(r) {
		if gz := a.gz(); gz != nil {
			h.Set("Content-Encoding", "gzip")
			body = gz
		}
	}
	http.ServeContent(w, r, "", c.started, bytes.NewReader(body))
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(t), "W/"))
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q := strings.TrimSpace(params)
		if v, ok := strings.CutPrefix(q, "q="); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil && f == 0 {
				return false
			}
		}
		return true
	}
	return false
}

// Wrap serves the client's paths and hands every other request to next
// (the gateway): static.Wrap(gw.Handler()).
func Wrap(next http.Handler) http.Handler {
	return WrapWith(next, nil)
}

// WrapWith is Wrap whose page / describes the shared cell it opens with
// meta (the gateway's PermalinkMeta), for link previews.
func WrapWith(next http.Handler, meta func(*http.Request) (Meta, bool)) http.Handler {
	c := New()
	c.meta = meta
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if Owns(r.URL.Path) && (r.Method == http.MethodGet || r.Method == http.MethodHead || r.URL.Path != "/") {
			c.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Register adds the client's routes to an echo server.
func Register(e *echo.Echo) {
	h := echo.WrapHandler(New())
	for _, p := range []string{"/", "/index.html", "/help.html", "/embedded_sagecell.js", "/static/*"} {
		e.GET(p, h)
		e.HEAD(p, h)
	}
}
