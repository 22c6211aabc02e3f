// Fuzz tests of the gateway's decoders of outside bytes sit beside the
// tests of the file that holds each decoder (codecs, poll, request). Their
// seed corpus runs with go test; `go test -fuzz FuzzX ./gateway/` explores.

package gateway

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/gorilla/websocket"
)

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
