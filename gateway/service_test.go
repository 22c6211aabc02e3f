package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
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

func TestServiceLimits(t *testing.T) {
	env := newTestEnv(t, 1, 4, func(c *Config) { c.ServiceTimeout = 2 * time.Second })
	var e apiError
	resp := env.postForm("/service", url.Values{"code": {strings.Repeat("1", 65001)}}, &e)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized code: %d %+v", resp.StatusCode, e)
	}
	var res serviceResult
	env.postForm("/service", url.Values{"code": {"while True: pass"}}, &res)
	if res.Success || !strings.Contains(res.Error, "limit") {
		t.Errorf("runaway computation: %+v", res)
	}
	var ok serviceResult
	env.do(http.MethodPost, "/service", "application/json", `{"code":"print('json')"}`, &ok)
	if !ok.Success || ok.Stdout != "json\n" {
		t.Errorf("JSON body: %+v", ok)
	}
	// A raw ';' in a form body (curl -d 'code=a; b') is not readable: say
	// so, rather than "missing code".
	var bad apiError
	resp = env.do(http.MethodPost, "/service", "application/x-www-form-urlencoded", "code=import os; print(1)", &bad)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(bad.Message, "form body") {
		t.Errorf("unreadable form: %d %+v", resp.StatusCode, bad)
	}
}

// /service keeps a bounded part of what a computation prints.
func TestServiceOutputIsBounded(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var res serviceResult
	code := "import sys\nfor i in range(300):\n    print('x' * 10000)\n    print('y' * 10000, file=sys.stderr)\nfor i in range(300):\n    display(i)"
	if resp := env.postForm("/service", url.Values{"code": {code}}, &res); resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("%d %+v", resp.StatusCode, res.Error)
	}
	for name, text := range map[string]string{"stdout": res.Stdout, "stderr": res.Stderr} {
		if len(text) > serviceMaxStream+100 || !strings.Contains(text, "output truncated") {
			t.Errorf("%s: %d bytes, marker %v", name, len(text), strings.Contains(text, "output truncated"))
		}
	}
	if len(res.Outputs) != serviceMaxOutputs || !res.OutputsTruncated {
		t.Errorf("%d outputs, truncated %v", len(res.Outputs), res.OutputsTruncated)
	}
}

// The code limit counts characters, as the Sage Cell Server does.
func TestServiceCodeLimitCountsCharacters(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	// 64,900 two-byte characters: 130 kB, under the limit in characters.
	code := "s = '" + strings.Repeat("é", 64900) + "'\nprint(len(s))"
	var res serviceResult
	if resp := env.postForm("/service", url.Values{"code": {code}}, &res); resp.StatusCode != http.StatusOK || res.Stdout != "64900\n" {
		t.Errorf("multi-byte code under the limit: %d %q %s", resp.StatusCode, res.Stdout, res.Error)
	}
	var e apiError
	if resp := env.postForm("/service", url.Values{"code": {strings.Repeat("é", 65001)}}, &e); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("over the limit: %d %+v", resp.StatusCode, e)
	}
}
