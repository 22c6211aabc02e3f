package gateway

import (
	"encoding/json"
	"fmt"
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

// /service evaluates a user_expressions field after the code, as the Sage
// cell does (a form field holding JSON, or an object in a JSON body).
func TestServiceUserExpressions(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	type reply struct {
		UserExpressions map[string]struct {
			Status string            `json:"status"`
			Data   map[string]string `json:"data"`
		} `json:"user_expressions"`
	}
	var res serviceResult
	form := url.Values{"code": {"x = 5"}, "user_expressions": {`{"sq": "x*x", "_sagecell_files": "sys._sage_.new_files()"}`}}
	if resp := env.postForm("/service", form, &res); resp.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("%d %+v", resp.StatusCode, res)
	}
	var r reply
	_ = json.Unmarshal(res.ExecuteReply, &r)
	if r.UserExpressions["sq"].Data["text/plain"] != "25" || r.UserExpressions["_sagecell_files"].Status != "ok" {
		t.Errorf("execute_reply %s", res.ExecuteReply)
	}
	res = serviceResult{}
	env.do(http.MethodPost, "/service", "application/json", `{"code": "y = 2", "user_expressions": {"y3": "y**3"}}`, &res)
	r = reply{}
	_ = json.Unmarshal(res.ExecuteReply, &r)
	if r.UserExpressions["y3"].Data["text/plain"] != "8" {
		t.Errorf("JSON body: execute_reply %s", res.ExecuteReply)
	}
	many := map[string]string{}
	for i := 0; i <= serviceMaxExpressions; i++ {
		many[fmt.Sprint("e", i)] = "1"
	}
	tooMany, _ := json.Marshal(many)
	for _, bad := range []string{`[1]`, `{"a": 1}`, `"x"`, `null`, `{`, string(tooMany)} {
		var e apiError
		if resp := env.postForm("/service", url.Values{"code": {"1"}, "user_expressions": {bad}}, &e); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("user_expressions %.40s: %d %+v", bad, resp.StatusCode, e)
		}
	}
}

// success is false whenever the computation did not finish normally.
func TestServiceSuccessOnlyWhenFinished(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	for code, why := range map[string]string{
		"import os\nprint('going')\nos.kill(os.getpid(), 9)": "kernel ended",
		"1/0": "",
	} {
		var res serviceResult
		if resp := env.postForm("/service", url.Values{"code": {code}}, &res); resp.StatusCode != http.StatusOK || res.Success || !strings.Contains(res.Error, why) {
			t.Errorf("%q: %d %+v", code, resp.StatusCode, res)
		}
	}
}

func FuzzParseUserExpressions(f *testing.F) {
	for _, s := range []string{`{"a": "1"}`, `{}`, `[]`, `{"a": null}`, `{"a": {"b": 1}}`, ``, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		exprs, err := parseUserExpressions(raw)
		if err != nil {
			return
		}
		if exprs == nil || len(exprs) > serviceMaxExpressions {
			t.Fatalf("%q gave %v", raw, exprs)
		}
	})
}

// /service answers with the files its computation wrote even when their
// upload outlasts the reply's hold: the session does not end (and cancel
// the upload) before they are stored.
func TestServiceWaitsForItsFiles(t *testing.T) {
	env, _ := newStorageEnv(t, func(c *Config) {
		c.Storage.ReplyHold = time.Millisecond
		// Generous: this is about waiting for the upload, not its speed
		// (3 s was too short for 12 MiB on a loaded machine).
		c.Storage.UploadTimeout = time.Minute
	})
	var res serviceResult
	code := "import os\nfor i in range(3):\n    open(f'part{i}.bin', 'wb').write(os.urandom(1 << 20))\nprint('written')"
	if r := env.postForm("/service", url.Values{"code": {code}, "language": {"python3"}}, &res); r.StatusCode != http.StatusOK || !res.Success {
		t.Fatalf("/service: %d %+v", r.StatusCode, res)
	}
	if len(res.Files) != 3 {
		t.Fatalf("answer lists %d files (%+v), want the 3 written", len(res.Files), res.Files)
	}
	for _, f := range res.Files {
		if status, body, _ := fetch(t, f.URL); status != http.StatusOK || len(body) != 1<<20 {
			t.Errorf("GET %s: %d, %d bytes", f.URL, status, len(body))
		}
	}
}
