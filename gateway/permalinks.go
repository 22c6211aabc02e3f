package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/storage"
)

// PermalinkStore is what the gateway needs for permalinks: a write-behind
// store that answers with an id at once.
type PermalinkStore interface {
	permalink.Store
	Get(ctx context.Context, id string) (storage.Permalink, error)
}

// createPermalink is POST /permalink (form or JSON: code, language,
// interacts, n), answered as the Sage Cell Server answers it: the id, the
// code and the interacts in the Sage cell's compressed form (zip), and n
// only if the request sent it; with frame=on, as a page that posts that to
// its parent.
func (s *Server) createPermalink(c echo.Context) error {
	if s.permalinks == nil {
		return s.sageError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	body, code, err := codeRequest(c)
	if err != nil {
		return s.sageError(c, http.StatusBadRequest, err.Error())
	}
	language := param(c, body, "language")
	if language == "" {
		language = s.sageDefaultKernel()
	}
	interacts := param(c, body, "interacts")
	if interacts == "" {
		if raw, ok := body["interacts"]; ok && raw != nil {
			b, _ := json.Marshal(raw)
			interacts = string(b)
		}
	}
	if interacts == "" {
		interacts = permalink.NoInteracts
	}
	answer := map[string]any{}
	if n, sent := permalinkN(c, body); sent {
		i, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil {
			return s.sageError(c, http.StatusBadRequest, fmt.Sprintf("n must be an integer, not %q", n))
		}
		answer["n"] = i
	}
	id, err := s.permalinks.Save(storage.Cell{Code: code, Language: language, Interacts: interacts})
	if errors.Is(err, storage.ErrInvalidCell) {
		return s.sageError(c, http.StatusBadRequest, err.Error())
	}
	if err != nil {
		s.log.Warn().Err(err).Msg("permalink not saved")
		return s.sageError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	answer["query"], answer["zip"], answer["interacts"] = id, storage.ZipEncode(code), storage.ZipEncode(interacts)
	return s.sageAnswer(c, http.StatusOK, answer)
}

// permalinkN is the request's n, and whether it sent one.
func permalinkN(c echo.Context, body map[string]any) (string, bool) {
	if _, ok := body["n"]; ok {
		return param(c, body, "n"), true
	}
	if form, err := c.FormParams(); err == nil {
		if v, ok := form["n"]; ok && len(v) > 0 {
			return v[0], true
		}
	}
	return "", false
}

// getPermalink is GET /permalink?q=ID, answered in the Sage cell's shape:
// the JSON array [code, language, interacts], or for a JSONP callback that
// array's JSON text passed to it (as the Sage cell's permalink server
// does). GET /permalink/ID is cellgate's own: the object {"code",
// "language", "interacts"}.
func (s *Server) getPermalink(c echo.Context) error {
	if s.cfg.Storage.Permalinks == nil {
		return httpError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	id, err := pathParam(c, "id")
	if err != nil {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	sageShape := id == ""
	if sageShape {
		id = c.QueryParam("q")
	}
	callback, err := jsonpCallback(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
	}
	began := time.Now()
	p, err := s.cfg.Storage.Permalinks.Get(c.Request().Context(), id)
	s.metrics.session.Storage.WithLabelValues("permalink_lookup").Observe(time.Since(began).Seconds())
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	if err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("permalink lookup failed")
		return httpError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	if !sageShape {
		return c.JSON(http.StatusOK, map[string]string{"code": p.Code, "language": p.Language, "interacts": p.Interacts})
	}
	cell := []string{p.Code, p.Language, p.Interacts}
	if callback != "" {
		text, err := json.Marshal(cell)
		if err != nil {
			return fmt.Errorf("permalink answer: %w", err)
		}
		return jsonp(c, callback, string(text))
	}
	return c.JSON(http.StatusOK, cell)
}
