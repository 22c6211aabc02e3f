package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/gateway/permalink"
	"github.com/cellgate/cellgate/gateway/result"
	"github.com/cellgate/cellgate/storage"
)

// PermalinkStore is what the gateway needs for permalinks: a write-behind
// store that answers with an id at once.
type PermalinkStore interface {
	permalink.Store
	Get(ctx context.Context, id string) (storage.Permalink, error)
	// Peek is Get without counting a request.
	Peek(ctx context.Context, id string) (storage.Permalink, error)
	Delete(ctx context.Context, id string) error
}

// ResultStore keeps permalinks' results (storage.Results).
type ResultStore interface {
	permalink.ResultStore
	Get(ctx context.Context, id string) (storage.Result, error)
	Delete(ctx context.Context, id string) error
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
	if ok, wait := s.permalinkRate.allow(c.RealIP(), time.Now()); !ok {
		c.Response().Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		return s.sageError(c, http.StatusTooManyRequests, fmt.Sprintf("too many permalinks from this address: at most %d a minute", s.cfg.PermalinksPerMinute))
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
	if kernelID := param(c, body, "kernel_id"); kernelID != "" {
		s.keepSharedResult(kernelID, id, code, language)
	}
	return s.sageAnswer(c, http.StatusOK, answer)
}

// keepSharedResult stores with a shared permalink what the sharer's cell
// shows: its session's last result, if that ran this code, with its
// interacts as the sharer left them. The session's id is the sharer's
// proof of access (it is the capability to run code there).
func (s *Server) keepSharedResult(kernelID, id, code, language string) {
	sess := s.sessions.get(kernelID)
	if sess == nil || sess.Language() != language || !s.permalinks.KeepsResults() {
		return
	}
	res, ok := sess.LastResult(code)
	if !ok {
		return
	}
	if err := s.permalinks.KeepNow(id, res); err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("shared result not stored")
	}
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
		answer := map[string]any{"code": p.Code, "language": p.Language, "interacts": p.Interacts}
		if res, ok := s.resultWithFiles(c, id); ok {
			answer["result"] = res
		}
		return c.JSON(http.StatusOK, answer)
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

// storedResult is permalink id's stored result, if there is one and the
// store answers (a permalink without its result is still a permalink).
func (s *Server) storedResult(ctx context.Context, id string) (json.RawMessage, bool) {
	if s.cfg.Storage.Results == nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	began := time.Now()
	res, err := s.cfg.Storage.Results.Get(ctx, id)
	s.metrics.session.Storage.WithLabelValues("result_lookup").Observe(time.Since(began).Seconds())
	if err != nil {
		if !errors.Is(err, storage.ErrNotFound) {
			s.log.Warn().Err(err).Str("permalink", id).Msg("result lookup failed")
		}
		return nil, false
	}
	return json.RawMessage(res.Body), true
}

// resultWithFiles is permalink id's stored result as clients get it: its
// large images put back in place and links to the files its execution
// wrote (stored in GridFS with the permalink's id).
func (s *Server) resultWithFiles(c echo.Context, id string) (json.RawMessage, bool) {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 10*time.Second)
	defer cancel()
	res, ok := s.loadResult(ctx, id)
	if !ok {
		return nil, false
	}
	if s.cfg.Storage.Files != nil {
		files, err := s.cfg.Storage.Files.ByPermalink(ctx, id, res.Created)
		if err != nil {
			s.log.Warn().Err(err).Str("permalink", id).Msg("listing a result's files failed")
		}
		base := s.baseURL(c).String()
		for _, f := range files {
			res.Files = append(res.Files, result.File{Name: f.Name, URL: fileURL(base, f.ID, f.Name), Size: f.Size, ContentType: f.ContentType})
		}
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return nil, false
	}
	return raw, true
}

// loadResult is permalink id's stored result with its large images put
// back as the base64 data nbformat has (an image that cannot be read is
// left out).
func (s *Server) loadResult(ctx context.Context, id string) (result.Result, bool) {
	raw, ok := s.storedResult(ctx, id)
	if !ok {
		return result.Result{}, false
	}
	var res result.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("a stored result does not decode")
		return result.Result{}, false
	}
	for i, o := range res.Outputs {
		if !strings.Contains(string(o.Data), permalink.FileRefPrefix) {
			continue
		}
		var data map[string]json.RawMessage
		if json.Unmarshal(o.Data, &data) != nil {
			continue
		}
		for mime, v := range data {
			var ref string
			if json.Unmarshal(v, &ref) != nil || !strings.HasPrefix(ref, permalink.FileRefPrefix) {
				continue
			}
			image, err := s.readStoredFile(ctx, strings.TrimPrefix(ref, permalink.FileRefPrefix))
			if err != nil {
				s.log.Warn().Err(err).Str("permalink", id).Msg("a result's image could not be read")
				delete(data, mime)
				continue
			}
			data[mime], _ = json.Marshal(base64.StdEncoding.EncodeToString(image))
		}
		res.Outputs[i].Data, _ = json.Marshal(data)
	}
	return res, true
}

// readStoredFile reads a whole stored file (at most the file limit).
func (s *Server) readStoredFile(ctx context.Context, fileID string) ([]byte, error) {
	if s.cfg.Storage.Files == nil {
		return nil, errors.New("no file store")
	}
	r, err := s.cfg.Storage.Files.OpenFile(ctx, fileID, "")
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, maxResultImageBytes))
}

// maxResultImageBytes bounds what readStoredFile reads of one image.
const maxResultImageBytes = 32 << 20

// permalinkOutputs is GET /permalink/ID/outputs: the stored result alone
// (outputs, widget state, date).
func (s *Server) permalinkOutputs(c echo.Context) error {
	if s.cfg.Storage.Results == nil {
		return httpError(c, http.StatusNotFound, "this server keeps no results with permalinks")
	}
	id, err := pathParam(c, "id")
	if err != nil || id == "" {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	res, ok := s.resultWithFiles(c, id)
	if !ok {
		return httpError(c, http.StatusNotFound, "no result is stored with this permalink")
	}
	return c.JSONBlob(http.StatusOK, res)
}

// deletePermalink is DELETE /permalink/ID, for the operator (the --token):
// the permalink and its result go; 204 whether or not it existed.
func (s *Server) deletePermalink(c echo.Context) error {
	if s.cfg.Storage.Permalinks == nil {
		return httpError(c, http.StatusNotImplemented, "permalinks need a database")
	}
	id, err := pathParam(c, "id")
	if err != nil || id == "" {
		return httpError(c, http.StatusNotFound, "no such permalink")
	}
	ctx := c.Request().Context()
	err = s.cfg.Storage.Permalinks.Delete(ctx, id)
	if errors.Is(err, storage.ErrStillWriting) {
		c.Response().Header().Set("Retry-After", "5")
		return httpError(c, http.StatusConflict, err.Error())
	}
	if err == nil && s.cfg.Storage.Results != nil {
		err = s.cfg.Storage.Results.Delete(ctx, id)
	}
	if err != nil {
		s.log.Warn().Err(err).Str("permalink", id).Msg("permalink not deleted")
		return httpError(c, http.StatusServiceUnavailable, "the permalink store is unavailable")
	}
	s.log.Info().Str("permalink", id).Str("remote", c.RealIP()).Msg("permalink deleted")
	return c.NoContent(http.StatusNoContent)
}

// requireOperator lets through only requests with the server's --token;
// with no token set, nobody is the operator.
func (s *Server) requireOperator(next echo.HandlerFunc) echo.HandlerFunc {
	checked := s.requireToken(next)
	return func(c echo.Context) error {
		if s.cfg.Token == "" {
			return httpError(c, http.StatusForbidden, "this needs the operator's token: start cellgate with --token")
		}
		return checked(c)
	}
}
