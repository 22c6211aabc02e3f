package jupytermsg

import (
	"bytes"
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

func TestNewMessage(t *testing.T) {
	parent := goldenMessage()
	if err := parent.parseHeader(); err != nil {
		t.Fatal(err)
	}
	m, err := New("execute_reply", "sess", parent, ExecuteReply{Status: "ok", ExecutionCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	if m.ParentMsgID() != "1" || m.Header.Session != "sess" || m.Header.Version != ProtocolVersion {
		t.Errorf("header %+v parent %q", m.Header, m.ParentMsgID())
	}
	var h Header
	if err := json.Unmarshal(m.RawHeader, &h); err != nil || h != m.Header {
		t.Errorf("raw header %s does not match %+v", m.RawHeader, m.Header)
	}
	if len(m.Header.Date) == 0 || m.Header.Date[len(m.Header.Date)-1] != 'Z' {
		t.Errorf("date %q lacks Z", m.Header.Date)
	}
}

func FuzzDecode(f *testing.F) {
	s := NewSigner(golden.key)
	f.Add(bytes.Join(s.Encode([][]byte{[]byte("id")}, goldenMessage()), []byte{0}))
	f.Add([]byte("<IDS|MSG>\x00\x00{}\x00{}\x00{}\x00{}"))
	f.Fuzz(func(t *testing.T, joined []byte) {
		frames := bytes.Split(joined, []byte{0})
		for _, signer := range []Signer{s, NewSigner("")} {
			ids, m, err := signer.Decode(frames)
			if err != nil {
				if m != nil || ids != nil {
					t.Fatal("error with a result")
				}
				continue
			}
			again := signer.Encode(ids, m)
			if _, m2, err := signer.Decode(again); err != nil || m2.Header != m.Header {
				t.Fatalf("re-encode of an accepted message fails: %v", err)
			}
		}
	})
}
