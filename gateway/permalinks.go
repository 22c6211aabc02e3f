package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
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
// interacts, n), as the Sage Cell Server answers it.
func (s *Server) createPermalink(c echo.Context) error {
	if s.permalinks == nil {
		return httpError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	body, code, err := codeRequest(c)
	if err != nil {
		return httpError(c, http.StatusBadRequest, err.Error())
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
	id, err := s.permalinks.Save(storage.Cell{Code: code, Language: language, Interacts: interacts})
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
	s.metrics.session.Storage.WithLabelValues("permalink_lookup").Observe(time.Since(began).Seconds())
	if errors.Is(err, storage.ErrNotFound) {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	if err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("permalink lookup failed")
		return httpError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	return c.JSON(http.StatusOK, map[string]string{"code": p.Code, "language": p.Language, "interacts": p.Interacts})
}
