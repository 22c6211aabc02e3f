package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestService(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var res serviceResult
	resp := env.postForm("/service", url.Values{"code": {"import sys\nprint(1+1)\nprint('oops', file=sys.stderr)\n3*3"}}, &res)
	if resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("status %d result %+v", resp.StatusCode, res)
	}
	if res.Stdout != "2\n" || res.Stderr != "oops\n" || len(res.Outputs) != 1 || !strings.Contains(string(res.Outputs[0]), `"9"`) {
		t.Errorf("result %+v", res)
	}
}
