package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/result"
)

// PageMeta is what a shared link's page says about itself to link
// previews (Open Graph) and to oEmbed consumers.
type PageMeta struct {
	Title       string
	Description string
	// URL is the page's canonical address, Image a picture of its result
	// ("" without one), OEmbed the page's oEmbed endpoint.
	URL, Image, OEmbed string
}

const (
	maxTitleRunes       = 80
	maxDescriptionRunes = 200
	// previewTimeout bounds the lookups a page's first paint waits for.
	previewTimeout = 2 * time.Second
	// oEmbed sizes of the iframe, when the consumer sets no maximum.
	oembedWidth, oembedHeight = 720, 480
)

// PermalinkMeta describes the page /?q=ID for link previews, from the
// permalink's code and its stored result. It reports false for any other
// page, or when the permalink cannot be read in time (the page is then
// served without; it must never wait long for the database).
func (s *Server) PermalinkMeta(r *http.Request) (PageMeta, bool) {
	id := r.URL.Query().Get("q")
	if id == "" || s.cfg.Storage.Permalinks == nil {
		return PageMeta{}, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), previewTimeout)
	defer cancel()
	p, err := s.cfg.Storage.Permalinks.Peek(ctx, id)
	if err != nil {
		return PageMeta{}, false
	}
	base := s.baseURLOf(r)
	page := *base
	page.RawQuery = url.Values{"q": {p.ID}}.Encode()
	meta := PageMeta{
		Title:  previewTitle(p.Code, p.Language),
		URL:    page.String(),
		OEmbed: base.String() + "oembed?" + url.Values{"url": {page.String()}, "format": {"json"}}.Encode(),
	}
	if res, ok := s.previewResult(ctx, p.ID); ok {
		meta.Description = previewText(res)
		if _, found := firstPNG(res); found {
			meta.Image = base.String() + "permalink/" + url.PathEscape(p.ID) + "/image.png"
		}
	}
	if meta.Description == "" {
		meta.Description = clip(oneLine(p.Code), maxDescriptionRunes)
	}
	return meta, true
}

// baseURLOf is baseURL for a plain request (the client's pages are not
// echo's).
func (s *Server) baseURLOf(r *http.Request) *url.URL {
	c := s.echo.NewContext(r, nil)
	return s.baseURL(c)
}

func (s *Server) previewResult(ctx context.Context, id string) (result.Result, bool) {
	return s.loadResult(ctx, id)
}

// previewTitle is the code's first line that says something, and the
// kernel it runs in.
func previewTitle(code, language string) string {
	line := ""
	for _, l := range strings.Split(code, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") {
			line = l
			break
		}
	}
	if line == "" {
		line = "A compute cell"
	}
	return clip(line, maxTitleRunes) + " · " + language
}

// previewText is the result's text: its streams and text/plain outputs.
func previewText(res result.Result) string {
	var b strings.Builder
	for _, o := range res.Outputs {
		switch o.OutputType {
		case "stream":
			b.WriteString(o.Text)
		case "execute_result", "display_data":
			var data map[string]json.RawMessage
			if json.Unmarshal(o.Data, &data) == nil {
				var text string
				if json.Unmarshal(data["text/plain"], &text) == nil {
					b.WriteString(text + "\n")
				}
			}
		case "error":
			b.WriteString(o.Ename + ": " + o.Evalue + "\n")
		}
		if b.Len() > 4*maxDescriptionRunes {
			break
		}
	}
	return clip(oneLine(b.String()), maxDescriptionRunes)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func clip(s string, runes int) string {
	if utf8.RuneCountInString(s) <= runes {
		return s
	}
	r := []rune(s)
	return string(r[:runes-1]) + "…"
}

// firstPNG is the first PNG image among the result's outputs.
func firstPNG(res result.Result) ([]byte, bool) {
	for _, o := range res.Outputs {
		if o.OutputType != "display_data" && o.OutputType != "execute_result" {
			continue
		}
		var data map[string]json.RawMessage
		if json.Unmarshal(o.Data, &data) != nil {
			continue
		}
		var encoded string
		if json.Unmarshal(data["image/png"], &encoded) != nil || encoded == "" {
			continue
		}
		png, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(encoded), ""))
		if err == nil && len(png) > 8 && string(png[1:4]) == "PNG" {
			return png, true
		}
	}
	return nil, false
}

// permalinkImage is GET /permalink/ID/image.png: the first PNG the stored
// result shows, for link previews.
func (s *Server) permalinkImage(c echo.Context) error {
	id, err := pathParam(c, "id")
	if err != nil || id == "" {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	res, ok := s.previewResult(c.Request().Context(), id)
	if !ok {
		return httpError(c, http.StatusNotFound, "no result is stored with this permalink")
	}
	png, ok := firstPNG(res)
	if !ok {
		return httpError(c, http.StatusNotFound, "this permalink's result has no image")
	}
	h := c.Response().Header()
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	return c.Blob(http.StatusOK, "image/png", png)
}

// oembed is GET /oembed?url=…: the oEmbed (1.0) answer for a shared
// cell's link (this server's /?q=ID), a "rich" type whose html is an
// iframe of it. Only JSON is spoken (501 for format=xml, as the spec
// asks); 404 for a URL that is not such a link.
func (s *Server) oembed(c echo.Context) error {
	if f := c.QueryParam("format"); f != "" && f != "json" {
		return httpError(c, http.StatusNotImplemented, "only format=json is served")
	}
	link, err := url.Parse(c.QueryParam("url"))
	if err != nil || link.Query().Get("q") == "" {
		return httpError(c, http.StatusNotFound, "url is not a link to a shared cell on this server")
	}
	base := s.baseURL(c)
	linkPath := link.Path
	if linkPath == "" {
		linkPath = "/"
	}
	if link.Host != base.Host || linkPath != base.Path && linkPath != base.Path+"index.html" {
		return httpError(c, http.StatusNotFound, "url is not a link to a shared cell on this server")
	}
	r := c.Request().Clone(c.Request().Context())
	r.URL.RawQuery = url.Values{"q": {link.Query().Get("q")}}.Encode()
	meta, ok := s.PermalinkMeta(r)
	if !ok {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	width, height := oembedWidth, oembedHeight
	if w, err := strconv.Atoi(c.QueryParam("maxwidth")); err == nil && w > 0 && w < width {
		width = w
	}
	if h, err := strconv.Atoi(c.QueryParam("maxheight")); err == nil && h > 0 && h < height {
		height = h
	}
	answer := map[string]any{
		"version":       "1.0",
		"type":          "rich",
		"provider_name": "cellgate",
		"provider_url":  base.String(),
		"title":         meta.Title,
		"width":         width,
		"height":        height,
		"html": fmt.Sprintf(`<iframe src="%s" width="%d" height="%d" style="border:0;max-width:100%%" loading="lazy" title="%s" allow="clipboard-write"></iframe>`,
			html.EscapeString(meta.URL), width, height, html.EscapeString(meta.Title)),
	}
	if meta.Image != "" {
		answer["thumbnail_url"] = meta.Image
	}
	return c.JSON(http.StatusOK, answer)
}
