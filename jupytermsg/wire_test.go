package jupytermsg

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"
)

// A message whose signature was computed independently with Python:
// hmac.new(b"secret", h+p+m+c, hashlib.sha256).hexdigest()
var golden = struct {
	key               string
	header, parent    string
	metadata, content string
	signature         string
}{
	key:       "secret",
	header:    `{"msg_id":"1","session":"s","username":"u","date":"2026-01-01T00:00:00.000000Z","msg_type":"execute_request","version":"5.3"}`,
	parent:    `{}`,
	metadata:  `{}`,
	content:   `{"code":"1+1"}`,
	signature: "0ddf9dddf284521500b64551d7324e837d9eb8598ad1b066adb3d9c30b069617",
}

func goldenMessage() *Message {
	return &Message{
		RawHeader:    json.RawMessage(golden.header),
		ParentHeader: json.RawMessage(golden.parent),
		Metadata:     json.RawMessage(golden.metadata),
		Content:      json.RawMessage(golden.content),
		Buffers:      [][]byte{[]byte("buf0"), {0, 1, 2}},
	}
}

func TestEncodeByteLayout(t *testing.T) {
	s := NewSigner(golden.key)
	frames := s.Encode([][]byte{[]byte("ident")}, goldenMessage())
	want := [][]byte{
		[]byte("ident"), []byte("<IDS|MSG>"), []byte(golden.signature),
		[]byte(golden.header), []byte(golden.parent), []byte(golden.metadata), []byte(golden.content),
		[]byte("buf0"), {0, 1, 2},
	}
	if len(frames) != len(want) {
		t.Fatalf("got %d frames, want %d", len(frames), len(want))
	}
	for i := range want {
		if !bytes.Equal(frames[i], want[i]) {
			t.Errorf("frame %d = %q, want %q", i, frames[i], want[i])
		}
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	s := NewSigner(golden.key)
	ids, m, err := s.Decode(s.Encode([][]byte{[]byte("a"), []byte("b")}, goldenMessage()))
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || string(ids[1]) != "b" {
		t.Errorf("identities = %q", ids)
	}
	if m.Header.MsgType != "execute_request" || m.Header.MsgID != "1" {
		t.Errorf("header = %+v", m.Header)
	}
	if string(m.Content) != golden.content || len(m.Buffers) != 2 {
		t.Errorf("content %s buffers %d", m.Content, len(m.Buffers))
	}
}

func TestDecodeRejects(t *testing.T) {
	s := NewSigner(golden.key)
	good := s.Encode(nil, goldenMessage())
	tamper := func(i int, b []byte) [][]byte {
		f := append([][]byte(nil), good...)
		f[i] = b
		return f
	}
	cases := []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"no delimiter", good[1:], ErrMalformed},
		{"too few frames", good[:5], ErrMalformed},
		{"tampered content", tamper(5, []byte(`{"code":"2+2"}`)), ErrBadSignature},
		{"missing signature", tamper(1, nil), ErrBadSignature},
		{"wrong case signature", tamper(1, bytes.ToUpper(good[1])), ErrBadSignature},
		{"other key", NewSigner("other").Encode(nil, goldenMessage()), ErrBadSignature},
		{"header not json", func() [][]byte {
			m := goldenMessage()
			m.RawHeader = json.RawMessage("nope")
			return s.Encode(nil, m)
		}(), ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, m, err := s.Decode(c.frames)
			if !errors.Is(err, c.want) || m != nil {
				t.Fatalf("Decode = %v, %v; want error %v and no message", m, err, c.want)
			}
		})
	}
}

func TestEmptyKeyMeansNoSignature(t *testing.T) {
	s := NewSigner("")
	frames := s.Encode(nil, goldenMessage())
	if len(frames[1]) != 0 {
		t.Fatalf("signature with empty key = %q", frames[1])
	}
	if _, _, err := s.Decode(frames); err != nil {
		t.Fatal(err)
	}
	frames[1] = []byte("abc")
	if _, _, err := s.Decode(frames); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("a signature where none is expected: %v", err)
	}
}

// joinFrames and splitFrames give the fuzzer multipart input whose frames
// may hold any byte, NUL included: each frame is a uvarint length and then
// that many bytes.
func joinFrames(frames [][]byte) []byte {
	var out []byte
	for _, f := range frames {
		out = binary.AppendUvarint(out, uint64(len(f)))
		out = append(out, f...)
	}
	return out
}

func splitFrames(data []byte) [][]byte {
	var frames [][]byte
	for len(data) > 0 {
		n, used := binary.Uvarint(data)
		if used <= 0 || n > uint64(len(data)-used) {
			// A short last frame takes what is left, so every input
			// means something.
			return append(frames, data)
		}
		frames = append(frames, data[used:used+int(n)])
		data = data[used+int(n):]
	}
	return frames
}

func TestSplitFramesKeepsNUL(t *testing.T) {
	want := [][]byte{[]byte("id"), {0, 1, 0}, {}, []byte(Delimiter)}
	got := splitFrames(joinFrames(want))
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("frame %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func FuzzDecode(f *testing.F) {
	s := NewSigner(golden.key)
	f.Add(joinFrames(s.Encode([][]byte{[]byte("id")}, goldenMessage())))
	f.Add(joinFrames(NewSigner("").Encode(nil, goldenMessage())))
	withNUL := goldenMessage()
	withNUL.Content = json.RawMessage(`{"code":"\u0000"}`)
	withNUL.Buffers = [][]byte{{0, 0, 0}}
	f.Add(joinFrames(s.Encode([][]byte{{0}}, withNUL)))
	f.Add(joinFrames([][]byte{[]byte(Delimiter), {}, []byte("{}"), []byte("{}"), []byte("{}"), []byte("{}")}))
	f.Fuzz(func(t *testing.T, joined []byte) {
		frames := splitFrames(joined)
		for _, signer := range []Signer{s, NewSigner("")} {
			ids, m, err := signer.Decode(frames)
			if err != nil {
				if m != nil || ids != nil {
					t.Fatal("error with a result")
				}
				continue
			}
			if m.Header.MsgType == "" || !json.Valid(m.RawHeader) {
				t.Fatalf("accepted header %q", m.RawHeader)
			}
			again := signer.Encode(ids, m)
			ids2, m2, err := signer.Decode(again)
			if err != nil || m2.Header != m.Header || len(ids2) != len(ids) || len(m2.Buffers) != len(m.Buffers) {
				t.Fatalf("re-encode of an accepted message fails: %v", err)
			}
			for i := range m.Buffers {
				if !bytes.Equal(m.Buffers[i], m2.Buffers[i]) {
					t.Fatalf("buffer %d changed in a round trip", i)
				}
			}
		}
	})
}

// TestDecodeHeaderIsStrict holds the ZMQ path to the websocket decoders'
// rules, so a kernel's header cannot be read one way here and another way
// by the kernel or a client.
func TestDecodeHeaderIsStrict(t *testing.T) {
	s := NewSigner(golden.key)
	cases := map[string]string{
		"null":              `null`,
		"array":             `[]`,
		"string":            `"x"`,
		"no msg_type":       `{"msg_id":"1","session":"s"}`,
		"upper-case key":    `{"msg_id":"1","MSG_TYPE":"execute_request"}`,
		"duplicate key":     `{"msg_id":"1","msg_type":"a","msg_type":"b"}`,
		"non-string msg_id": `{"msg_id":1,"msg_type":"status"}`,
		"empty":             ``,
		"not UTF-8":         "{\"msg_type\":\"a\xff\"}",
	}
	for name, header := range cases {
		t.Run(name, func(t *testing.T) {
			m := goldenMessage()
			m.RawHeader = json.RawMessage(header)
			frames := s.Encode(nil, m)
			frames[2] = []byte(header) // Encode would turn "" into {}
			frames[1] = s.Sign(frames[2], frames[3], frames[4], frames[5])
			if _, m, err := s.Decode(frames); !errors.Is(err, ErrMalformed) || m != nil {
				t.Fatalf("Decode = %v, %v; want ErrMalformed", m, err)
			}
		})
	}
}
