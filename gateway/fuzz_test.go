package gateway

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/labstack/echo/v4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// Fuzz tests for every decoder of outside bytes in the gateway. The seed
// corpus runs with go test; `go test -fuzz FuzzX ./gateway/` explores.

func FuzzSplitPollBody(f *testing.F) {
	for _, seed := range []string{
		`{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":"1"}}`,
		`[{"channel":"shell"},{"channel":"control"}]`, ` [ ]`, `[`, `[1,2`, ``, "\n[null]", `"x"`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		frames, err := splitPollBody(body)
		if err != nil {
			return
		}
		if trimmed := bytes.TrimLeft(body, jsonSpace); len(trimmed) > 0 && trimmed[0] == '[' {
			for _, fr := range frames {
				if !json.Valid(fr) {
					t.Fatalf("array element %q is not JSON", fr)
				}
			}
		} else if len(frames) != 1 || !bytes.Equal(frames[0], body) {
			t.Fatalf("a single frame came back as %q", frames)
		}
		for _, fr := range frames {
			_, _, _ = jupytermsg.DecodeJSONFrame(fr)
		}
	})
}

func FuzzFormOrJSON(f *testing.F) {
	f.Add("application/json", `{"code":"1+1","timeout":30,"accepted_tos":true,"interacts":[1,{"a":null}]}`)
	f.Add("application/json", `[1,2]`)
	f.Add("application/json; charset=utf-8", `{"code":`)
	f.Add("application/x-www-form-urlencoded", "code=1%2B1&timeout=0&language=python")
	f.Add("application/x-www-form-urlencoded", "code=%zz&&=")
	f.Add("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"code\"\r\n\r\n1\r\n--x--\r\n")
	e := echo.New()
	f.Fuzz(func(t *testing.T, contentType, body string) {
		req := httptest.NewRequest(http.MethodPost, "/kernel?timeout=5", strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		c := e.NewContext(req, httptest.NewRecorder())
		fields, err := formOrJSON(c)
		if err != nil {
			return
		}
		for _, name := range []string{"code", "timeout", "language", "kernel_name", "interacts", "client_id", "n", "method"} {
			_ = param(c, fields, name)
		}
	})
}

func FuzzNumbers(f *testing.F) {
	for _, seed := range []string{"0", "1.5", "-1", "NaN", "Inf", "-0", "1e9", "1e10", "18446744073709551615", "18446744073709551616", " 1", "0x10", ""} {
		f.Add(seed, uint64(10))
	}
	f.Fuzz(func(t *testing.T, v string, last uint64) {
		if d, err := parseSeconds(v); err == nil && (d < 0 || d > time.Duration(1e9*float64(time.Second)) || math.IsNaN(float64(d))) {
			t.Fatalf("parseSeconds(%q) = %v", v, d)
		}
		if n, err := parseSince(v, last); err == nil && n > last {
			t.Fatalf("parseSince(%q, %d) = %d, beyond the last", v, last, n)
		}
		const limit = 25 * time.Second
		if d, err := parseWait(v, limit); err == nil && (d < 0 || d > limit) {
			t.Fatalf("parseWait(%q) = %v", v, d)
		}
	})
}

// FuzzClientFrame runs client bytes through every websocket decoder and
// the checks a decoded message meets before it reaches a kernel.
func FuzzClientFrame(f *testing.F) {
	f.Add(true, false, []byte(`{"channel":"shell","header":{"msg_type":"execute_request","msg_id":"1"},"parent_header":{},"metadata":{},"content":{"code":"1","user_expressions":{"_sagecell_files":"x"}}}`))
	f.Add(false, false, []byte(`{"channel":"iopub","header":{"msg_type":"stream"},"content":{}}`))
	f.Add(false, true, []byte{2, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 0, 0, 0, 0, 0, 's', 'h', 'e', 'l', 'l'})
	f.Add(true, true, []byte{0, 0, 0, 2, 0, 0, 0, 12, 0, 0, 0, 14, '{', '}', 'x'})
	f.Add(false, false, []byte(`{"channel":"shell","header":{"msg_type":"execute_request"},"content":{"code":1,"silent":"no","user_expressions":[]}}`))
	codecs := []codec{sageCodec{}, jupyterCodec{}, jupyterCodec{protocol: jupytermsg.WSProtocolV1}}
	f.Fuzz(func(t *testing.T, sage, binary bool, data []byte) {
		kind := websocket.TextMessage
		if binary {
			kind = websocket.BinaryMessage
		}
		cds := codecs[1:]
		if sage {
			cds = codecs[:1]
		}
		for _, cd := range cds {
			ch, m, err := cd.decode(kind, data)
			if err != nil {
				continue
			}
			if err := jupytermsg.FillHeader(m, "client"); err != nil {
				continue
			}
			// What the session does with a decoded execute_request is
			// fuzzed in package session (FuzzPrepareExecute).
			if m.Header.MsgID == "" || m.Header.Session == "" {
				t.Fatalf("decoded %q (channel %q) to a header without id or session: %+v", data, ch, m.Header)
			}
		}
	})
}

func FuzzWithSeq(f *testing.F) {
	for _, seed := range []string{`{}`, `{"a":1}`, `{ }`, ` {"a":1}`, `[]`, ``, `{`, `{"seq":1}`} {
		f.Add([]byte(seed), uint64(7))
	}
	f.Fuzz(func(t *testing.T, frame []byte, seq uint64) {
		out := withSeq(frame, seq)
		if !json.Valid(frame) || !bytes.HasPrefix(frame, []byte("{")) {
			return
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("withSeq(%q) = %q: %v", frame, out, err)
		}
		var n uint64
		if err := json.Unmarshal(got["seq"], &n); err != nil || (n != seq && !bytes.Contains(frame, []byte(`"seq"`))) {
			t.Fatalf("withSeq(%q, %d) = %q", frame, seq, out)
		}
	})
}
