package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// Upgrade failures and unexpected errors answer in the JSON error shape,
// and internal error text stays in the log.
func TestErrorsAreJSONAndKeepInternalsIn(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	var e apiError
	if r := env.do(http.MethodGet, "/kernel/"+k.ID+"/channels", "", "", &e); r.StatusCode != http.StatusBadRequest || e.Message == "" {
		t.Errorf("plain GET of a websocket: %d %+v", r.StatusCode, e)
	}
	bad := http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"7"}}
	r := env.doWith(http.MethodGet, "/kernel/"+k.ID+"/channels", bad, "", &e)
	if r.StatusCode != http.StatusBadRequest || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") || e.Message == "" {
		t.Errorf("failed upgrade: %d %s %+v", r.StatusCode, r.Header.Get("Content-Type"), e)
	}

	rec := httptest.NewRecorder()
	c := env.gw.echo.NewContext(httptest.NewRequest(http.MethodGet, "/x", nil), rec)
	env.gw.errorHandler(errors.New("dial tcp 10.0.0.7:27017: secret internal detail"), c)
	var got apiError
	_ = json.Unmarshal(rec.Body.Bytes(), &got)
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "secret") || got.RequestID == "" {
		t.Errorf("internal error answered %d %s", rec.Code, rec.Body)
	}
}
