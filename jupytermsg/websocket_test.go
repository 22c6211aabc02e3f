package jupytermsg

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// The parts of the golden websocket message. The header carries a field
// cellgate does not know ("x"), which must pass through untouched.
const (
	wsHeader  = `{"msg_id":"m1","msg_type":"stream","x":1}` // 41 bytes
	wsContent = `{"name":"stdout","text":"hi\n"}`           // 31 bytes
)

// The legacy JSON object (179 bytes), as Jupyter Server would send it, with
// the top-level msg_id/msg_type copies, but without "buffers" (binary frame).
const wsLegacyJSON = `{"header":` + wsHeader + `,"msg_id":"m1","msg_type":"stream","parent_header":{},"metadata":{},"content":` + wsContent + `,"channel":"iopub"}`

// Hand-built frames. The offsets were worked out by hand from the layouts in
// jupyter_server's docs/source/developers/websocket-protocols.rst.
var (
	wsGoldenText = `{"header":` + wsHeader + `,"msg_id":"m1","msg_type":"stream","parent_header":{},"metadata":{},"content":` + wsContent + `,"buffers":[],"channel":"iopub"}`

	// nbufs = 4 (JSON + 3 buffers); offset table 4*(1+4) = 20 bytes;
	// JSON at 20, "ab" at 20+179 = 199, "" at 201, "\x00\xff" at 201; length 203.
	wsGoldenBinary = "\x00\x00\x00\x04" +
		"\x00\x00\x00\x14" + "\x00\x00\x00\xc7" + "\x00\x00\x00\xc9" + "\x00\x00\x00\xc9" +
		wsLegacyJSON + "ab" + "" + "\x00\xff"

	// offset_number = 9 (channel, 4 JSON parts, 3 buffers, end); table
	// 8*(1+9) = 80 bytes; iopub 80..85, header ..126, {} ..128, {} ..130,
	// content ..161, "ab" ..163, "" ..163, "\x00\xff" ..165 = length.
	wsGoldenV1 = "\x09\x00\x00\x00\x00\x00\x00\x00" +
		"\x50\x00\x00\x00\x00\x00\x00\x00" + "\x55\x00\x00\x00\x00\x00\x00\x00" +
		"\x7e\x00\x00\x00\x00\x00\x00\x00" + "\x80\x00\x00\x00\x00\x00\x00\x00" +
		"\x82\x00\x00\x00\x00\x00\x00\x00" + "\xa1\x00\x00\x00\x00\x00\x00\x00" +
		"\xa3\x00\x00\x00\x00\x00\x00\x00" + "\xa3\x00\x00\x00\x00\x00\x00\x00" +
		"\xa5\x00\x00\x00\x00\x00\x00\x00" +
		"iopub" + wsHeader + "{}" + "{}" + wsContent + "ab" + "" + "\x00\xff"
)

func wsGoldenMessage(buffers ...[]byte) *Message {
	return &Message{
		Header:       Header{MsgID: "m1", MsgType: "stream"},
		RawHeader:    json.RawMessage(wsHeader),
		ParentHeader: json.RawMessage(`{}`),
		Metadata:     json.RawMessage(`{}`),
		Content:      json.RawMessage(wsContent),
		Buffers:      buffers,
	}
}

var wsGoldenBuffers = [][]byte{[]byte("ab"), {}, {0x00, 0xff}}

// sameMessage compares two messages part by part; trim ignores whitespace
// around the JSON parts (a v1 part may carry some, a legacy value cannot).
func sameMessage(a, b *Message, trim bool) error {
	if a.Header != b.Header {
		return fmt.Errorf("header %+v != %+v", a.Header, b.Header)
	}
	pa, pb := jsonParts(a), jsonParts(b)
	for i := range pa {
		x, y := pa[i], pb[i]
		if trim {
			x, y = trimJSONSpace(x), trimJSONSpace(y)
		}
		if !bytes.Equal(x, y) {
			return fmt.Errorf("%s %q != %q", partNames[i], x, y)
		}
	}
	if len(a.Buffers) != len(b.Buffers) {
		return fmt.Errorf("%d buffers != %d", len(a.Buffers), len(b.Buffers))
	}
	for i := range a.Buffers {
		if !bytes.Equal(a.Buffers[i], b.Buffers[i]) {
			return fmt.Errorf("buffer %d %q != %q", i, a.Buffers[i], b.Buffers[i])
		}
	}
	return nil
}

func TestWSGoldenLayouts(t *testing.T) {
	cases := []struct {
		name   string
		encode func(Channel, *Message) ([]byte, error)
		decode func([]byte) (Channel, *Message, error)
		msg    *Message
		want   string
	}{
		{"legacy text", EncodeJSONFrame, DecodeJSONFrame, wsGoldenMessage(), wsGoldenText},
		{"legacy binary", EncodeBinaryFrame, DecodeBinaryFrame, wsGoldenMessage(wsGoldenBuffers...), wsGoldenBinary},
		{"v1", EncodeV1Frame, DecodeV1Frame, wsGoldenMessage(wsGoldenBuffers...), wsGoldenV1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.encode(IOPub, c.msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Fatalf("encoded\n%q\nwant\n%q", got, c.want)
			}
			ch, m, err := c.decode([]byte(c.want))
			if err != nil {
				t.Fatal(err)
			}
			if ch != IOPub {
				t.Errorf("channel %q", ch)
			}
			if err := sameMessage(m, c.msg, false); err != nil {
				t.Error(err)
			}
		})
	}
}

// A frame exactly as the jupyter_server v1 serializer lays out a message it
// makes itself (no buffers): offset_number 6, table of 56 bytes.
func TestV1NoBuffersLayout(t *testing.T) {
	want := "\x06\x00\x00\x00\x00\x00\x00\x00" +
		"\x38\x00\x00\x00\x00\x00\x00\x00" + "\x3d\x00\x00\x00\x00\x00\x00\x00" + // 56, 61
		"\x66\x00\x00\x00\x00\x00\x00\x00" + "\x68\x00\x00\x00\x00\x00\x00\x00" + // 102, 104
		"\x6a\x00\x00\x00\x00\x00\x00\x00" + "\x89\x00\x00\x00\x00\x00\x00\x00" + // 106, 137
		"shell" + wsHeader + "{}{}" + wsContent
	got, err := EncodeV1Frame(Shell, wsGoldenMessage())
	if err != nil || string(got) != want {
		t.Fatalf("EncodeV1Frame = %q, %v\nwant %q", got, err, want)
	}
	ch, m, err := DecodeV1Frame([]byte(want))
	if err != nil || ch != Shell || m.Buffers != nil {
		t.Fatalf("DecodeV1Frame = %q, %+v, %v", ch, m, err)
	}
}

func TestWSRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0xde, 0xad}, 40000)
	msgs := map[string]*Message{
		"no buffers":       wsGoldenMessage(),
		"empty buffers":    wsGoldenMessage([][]byte{}...),
		"one empty buffer": wsGoldenMessage([]byte{}),
		"buffers":          wsGoldenMessage(wsGoldenBuffers...),
		"large buffer":     wsGoldenMessage(big, nil),
		"unicode and unknown header fields": {
			Header:       Header{MsgID: "é\"<>", MsgType: "comm_msg", Session: "s", Version: "5.4"},
			RawHeader:    json.RawMessage(`{"msg_id":"\u00e9\"<>","msg_type":"comm_msg","session":"s","version":"5.4","subshell_id":"abc","date":null}`),
			ParentHeader: json.RawMessage(`{"msg_id":"p"}`),
			Metadata:     json.RawMessage(`{"version":"2.1.0"}`),
			Content:      json.RawMessage(`{"comm_id":"c","data":{"method":"update","state":{"value":"π ≈ 3.14 🥧"}}}`),
		},
	}
	for name, msg := range msgs {
		for _, proto := range []string{"", WSProtocolV1} {
			t.Run(name+"/"+proto, func(t *testing.T) {
				frame, bin, err := EncodeWS(proto, Control, msg)
				if err != nil {
					t.Fatal(err)
				}
				if want := proto != "" || len(msg.Buffers) > 0; bin != want {
					t.Errorf("binary = %v, want %v", bin, want)
				}
				ch, m, err := DecodeWS(proto, bin, frame)
				if err != nil {
					t.Fatal(err)
				}
				if ch != Control {
					t.Errorf("channel %q", ch)
				}
				if err := sameMessage(m, msg, false); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func TestEncodeBinaryFrameWithoutBuffers(t *testing.T) {
	frame, err := EncodeBinaryFrame(Shell, wsGoldenMessage())
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint32(frame) != 1 || binary.BigEndian.Uint32(frame[4:]) != 8 {
		t.Fatalf("table %x", frame[:8])
	}
	if _, m, err := DecodeBinaryFrame(frame); err != nil || len(m.Buffers) != 0 {
		t.Fatalf("decode: %v", err)
	}
}

// Clients as they really send: JupyterLab (legacy), the classic notebook
// kernel.js that Sage Cell embeds, and Jupyter Server's own frames.
func TestDecodeJSONFrameClients(t *testing.T) {
	cases := []struct {
		name, frame string
		ch          Channel
		header      Header
	}{
		{"jupyterlab", `{"header":{"date":"2026-01-01T00:00:00.000Z","msgId":"x","msg_id":"a","msg_type":"execute_request","session":"s","username":"","version":"5.2"},"metadata":{},"content":{"code":"1+1","silent":false},"buffers":[],"parent_header":{},"channel":"shell"}`,
			Shell, Header{MsgID: "a", MsgType: "execute_request", Session: "s", Date: "2026-01-01T00:00:00.000Z", Version: "5.2"}},
		{"sagecell", "{\n \"header\": {\"msg_id\": \"b\", \"username\": \"u\", \"session\": \"s\", \"msg_type\": \"execute_request\", \"version\": \"5.0\"},\n \"metadata\": {}, \"content\": {\"code\": \"1\"}, \"parent_header\": {}, \"buffers\": [ ], \"channel\": \"shell\"\n}\n",
			Shell, Header{MsgID: "b", Username: "u", MsgType: "execute_request", Session: "s", Version: "5.0"}},
		{"jupyter server", `{"header":{"msg_id":"c","msg_type":"status"},"msg_id":"c","msg_type":"status","parent_header":null,"metadata":{},"content":{"execution_state":"idle"},"buffers":null,"channel":"iopub"}`,
			IOPub, Header{MsgID: "c", MsgType: "status"}},
		{"minimal", `{"header":{"msg_type":"kernel_info_request"},"content":{},"channel":"shell"}`,
			Shell, Header{MsgType: "kernel_info_request"}},
		{"escaped keys", `{"\u0068eader":{"msg\u005ftype":"x\u0079"},"content":{},"chann\u0065l":"st\u0064in"}`,
			Stdin, Header{MsgType: "xy"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch, m, err := DecodeJSONFrame([]byte(c.frame))
			if err != nil {
				t.Fatal(err)
			}
			if ch != c.ch || m.Header != c.header {
				t.Errorf("got %q %+v, want %q %+v", ch, m.Header, c.ch, c.header)
			}
			if !isJSONObject(m.ParentHeader) || !isJSONObject(m.Metadata) {
				t.Errorf("parent %q metadata %q", m.ParentHeader, m.Metadata)
			}
		})
	}
}

// Keys match exactly, as in the kernel's Python json: a "MSG_TYPE" cannot
// change what the gateway believes the message type is.
func TestHeaderKeysMatchExactly(t *testing.T) {
	frame := `{"header":{"msg_type":"execute_request","MSG_TYPE":"shutdown_request","Msg_Id":"z"},"content":{},"channel":"shell"}`
	_, m, err := DecodeJSONFrame([]byte(frame))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.MsgType != "execute_request" || m.Header.MsgID != "" {
		t.Fatalf("header %+v", m.Header)
	}
}

func TestDecodedPartsDoNotAlias(t *testing.T) {
	frame := []byte(wsGoldenV1)
	_, m, err := DecodeV1Frame(frame)
	if err != nil {
		t.Fatal(err)
	}
	_ = append(m.Content, 'X')
	_ = append(m.Buffers[0], 'Y', 'Y')
	if string(frame) != wsGoldenV1 {
		t.Fatal("appending to a decoded part overwrote the frame")
	}
}

// le64 and be32 build offset tables for malformed frames.
func le64(vs ...uint64) string {
	b := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return string(b)
}

func be32(vs ...uint32) string {
	b := make([]byte, 0, 4*len(vs))
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return string(b)
}

func jsonFrame(header, rest string) string {
	return `{"header":` + header + `,` + rest + `}`
}

const okRest = `"parent_header":{},"metadata":{},"content":{},"channel":"shell"`

func TestWSDecodeRejects(t *testing.T) {
	v1Parts := "shell" + wsHeader + "{}{}" + wsContent // 5+41+2+2+31 = 81
	v1 := func(offs ...uint64) string { return le64(uint64(len(offs))) + le64(offs...) }
	okV1Table := v1(56, 61, 102, 104, 106, 137)
	cases := []struct {
		name   string
		decode func([]byte) (Channel, *Message, error)
		frame  string
	}{
		// Legacy text frames.
		{"text empty", DecodeJSONFrame, ""},
		{"text not json", DecodeJSONFrame, "hello"},
		{"text array", DecodeJSONFrame, `[1,2]`},
		{"text null", DecodeJSONFrame, `null`},
		{"text trailing garbage", DecodeJSONFrame, jsonFrame(wsHeader, okRest) + "x"},
		{"text two objects", DecodeJSONFrame, jsonFrame(wsHeader, okRest) + "{}"},
		{"text invalid utf-8", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{"t":"`+"\xff"+`"},"channel":"shell"`)},
		{"text no channel", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{}`)},
		{"text channel hb", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"channel":"hb"`)},
		{"text channel unknown", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"channel":"Shell"`)},
		{"text channel number", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"channel":1`)},
		{"text duplicate channel", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"channel":"shell","channel":"control"`)},
		{"text duplicate content", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"content":{},"channel":"shell"`)},
		{"text no header", DecodeJSONFrame, `{"content":{},"channel":"shell"}`},
		{"text header null", DecodeJSONFrame, jsonFrame(`null`, okRest)},
		{"text header array", DecodeJSONFrame, jsonFrame(`[]`, okRest)},
		{"text header string", DecodeJSONFrame, jsonFrame(`"h"`, okRest)},
		{"text header without msg_type", DecodeJSONFrame, jsonFrame(`{"msg_id":"a"}`, okRest)},
		{"text header msg_type empty", DecodeJSONFrame, jsonFrame(`{"msg_type":""}`, okRest)},
		{"text header msg_type only in capitals", DecodeJSONFrame, jsonFrame(`{"MSG_TYPE":"x"}`, okRest)},
		{"text header msg_type number", DecodeJSONFrame, jsonFrame(`{"msg_type":5}`, okRest)},
		{"text header msg_id object", DecodeJSONFrame, jsonFrame(`{"msg_type":"x","msg_id":{}}`, okRest)},
		{"text header duplicate msg_type", DecodeJSONFrame, jsonFrame(`{"msg_type":"a","msg_type":"b"}`, okRest)},
		{"text header escaped duplicate", DecodeJSONFrame, jsonFrame(`{"msg_type":"a","msg\u005ftype":"b"}`, okRest)},
		{"text duplicate header", DecodeJSONFrame, `{"header":{"msg_type":"a"},"header":{"msg_type":"b"},` + okRest + `}`},
		{"text no content", DecodeJSONFrame, jsonFrame(wsHeader, `"channel":"shell"`)},
		{"text content null", DecodeJSONFrame, jsonFrame(wsHeader, `"content":null,"channel":"shell"`)},
		{"text content string", DecodeJSONFrame, jsonFrame(wsHeader, `"content":"x","channel":"shell"`)},
		{"text parent array", DecodeJSONFrame, jsonFrame(wsHeader, `"parent_header":[],"content":{},"channel":"shell"`)},
		{"text metadata number", DecodeJSONFrame, jsonFrame(wsHeader, `"metadata":1,"content":{},"channel":"shell"`)},
		{"text base64 buffers", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"buffers":["YQ=="],"channel":"shell"`)},
		{"text buffers object", DecodeJSONFrame, jsonFrame(wsHeader, `"content":{},"buffers":{},"channel":"shell"`)},

		// Legacy binary frames.
		{"binary empty", DecodeBinaryFrame, ""},
		{"binary 3 bytes", DecodeBinaryFrame, "\x00\x00\x00"},
		{"binary nbufs 0", DecodeBinaryFrame, be32(0) + "{}"},
		{"binary nbufs huge", DecodeBinaryFrame, be32(0xffffffff, 8)},
		{"binary nbufs over limit", DecodeBinaryFrame, be32(MaxWSBuffers+2) + strings.Repeat("\x00", 4*(MaxWSBuffers+2))},
		{"binary table truncated", DecodeBinaryFrame, be32(3, 16, 16)},
		{"binary offset inside table", DecodeBinaryFrame, be32(1, 4) + wsLegacyJSON},
		{"binary offset beyond frame", DecodeBinaryFrame, be32(2, 12, 5000) + wsLegacyJSON},
		{"binary offsets decrease", DecodeBinaryFrame, be32(2, 12+179, 12) + wsLegacyJSON},
		{"binary json cut", DecodeBinaryFrame, be32(2, 12, 12+100) + wsLegacyJSON},
		{"binary json not json", DecodeBinaryFrame, be32(1, 8) + "nope"},
		{"binary json with buffers", DecodeBinaryFrame, be32(1, 8) + jsonFrame(wsHeader, `"content":{},"buffers":["YQ=="],"channel":"shell"`)},
		{"binary json without channel", DecodeBinaryFrame, be32(2, 12, 12+2) + "{}ab"},

		// v1 frames.
		{"v1 empty", DecodeV1Frame, ""},
		{"v1 7 bytes", DecodeV1Frame, "\x06\x00\x00\x00\x00\x00\x00"},
		{"v1 offset_number 0", DecodeV1Frame, le64(0)},
		{"v1 offset_number 5", DecodeV1Frame, v1(48, 53, 94, 96, 98) + "shell" + wsHeader + "{}{}"},
		{"v1 offset_number max", DecodeV1Frame, le64(^uint64(0), 1, 2, 3)},
		{"v1 offset_number wraps", DecodeV1Frame, le64(1<<61, 1, 2, 3)},
		{"v1 offset_number over limit", DecodeV1Frame, le64(7+MaxWSBuffers) + strings.Repeat("\x00", 8*(7+MaxWSBuffers))},
		{"v1 table truncated", DecodeV1Frame, le64(6, 56, 61)},
		{"v1 offset inside table", DecodeV1Frame, v1(8, 61, 102, 104, 106, 137) + v1Parts},
		{"v1 offsets decrease", DecodeV1Frame, v1(56, 61, 102, 61, 106, 137) + v1Parts},
		{"v1 offset beyond frame", DecodeV1Frame, v1(56, 61, 102, 104, 106, 1<<40) + v1Parts},
		{"v1 offset 2^64-1", DecodeV1Frame, v1(56, 61, 102, 104, ^uint64(0), 137) + v1Parts},
		{"v1 trailing bytes", DecodeV1Frame, okV1Table + v1Parts + "junk"},
		{"v1 last offset short", DecodeV1Frame, v1(56, 61, 102, 104, 106, 136) + v1Parts},
		{"v1 channel hb", DecodeV1Frame, v1(56, 58, 99, 101, 103, 134) + "hb" + wsHeader + "{}{}" + wsContent},
		{"v1 channel with NUL", DecodeV1Frame, v1(56, 62, 103, 105, 107, 138) + "shell\x00" + wsHeader + "{}{}" + wsContent},
		{"v1 header not json", DecodeV1Frame, v1(56, 61, 65, 67, 69, 100) + "shellnope{}{}" + wsContent},
		{"v1 header array", DecodeV1Frame, v1(56, 61, 63, 65, 67, 98) + "shell[]{}{}" + wsContent},
		{"v1 header empty", DecodeV1Frame, v1(56, 61, 61, 63, 65, 96) + "shell{}{}" + wsContent},
		{"v1 header without msg_type", DecodeV1Frame, v1(56, 61, 63, 65, 67, 98) + "shell{}{}{}" + wsContent},
		{"v1 parent array", DecodeV1Frame, v1(56, 61, 102, 104, 106, 137) + "shell" + wsHeader + "[]{}" + wsContent},
		{"v1 content empty", DecodeV1Frame, v1(56, 61, 102, 104, 106, 106) + "shell" + wsHeader + "{}{}"},
		{"v1 content null", DecodeV1Frame, v1(56, 61, 102, 104, 106, 110) + "shell" + wsHeader + "{}{}null"},
		{"v1 content invalid utf-8", DecodeV1Frame, v1(56, 61, 102, 104, 106, 115) + "shell" + wsHeader + "{}{}" + "{\"t\":\"\xff\"}"},
		{"v1 content two values", DecodeV1Frame, v1(56, 61, 102, 104, 106, 110) + "shell" + wsHeader + "{}{}{}{}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch, m, err := c.decode([]byte(c.frame))
			if !errors.Is(err, ErrBadFrame) || m != nil || ch != "" {
				t.Fatalf("got %q, %+v, %v; want ErrBadFrame", ch, m, err)
			}
		})
	}
	// The table's reference frame is good: the cases above each break one thing.
	if _, _, err := DecodeV1Frame([]byte(okV1Table + v1Parts)); err != nil {
		t.Fatalf("reference v1 frame: %v", err)
	}
}

func TestV1EmptyParentAndMetadata(t *testing.T) {
	frame := le64(6, 56, 61, 102, 102, 106, 137) + "shell" + wsHeader + "" + "null" + wsContent
	_, m, err := DecodeV1Frame([]byte(frame))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.ParentHeader) != "{}" || string(m.Metadata) != "{}" {
		t.Fatalf("parent %q metadata %q", m.ParentHeader, m.Metadata)
	}
}

func TestWSSubprotocolDispatch(t *testing.T) {
	if _, _, err := DecodeWS(WSProtocolV1, false, []byte(wsGoldenText)); !errors.Is(err, ErrBadFrame) {
		t.Errorf("text frame on v1: %v", err)
	}
	if _, _, err := DecodeWS("v2.example", true, []byte(wsGoldenV1)); err == nil {
		t.Error("unknown subprotocol accepted")
	}
	if _, _, err := EncodeWS("v2.example", Shell, wsGoldenMessage()); err == nil {
		t.Error("unknown subprotocol accepted")
	}
	if _, _, err := DecodeWS("", true, []byte(wsGoldenBinary)); err != nil {
		t.Error(err)
	}
}

func TestWSEncodeRejects(t *testing.T) {
	bad := func(f func(m *Message)) *Message {
		m := wsGoldenMessage()
		f(m)
		return m
	}
	cases := []struct {
		name string
		ch   Channel
		msg  *Message
	}{
		{"channel hb", Heartbeat, wsGoldenMessage()},
		{"channel with quote", Channel(`shell","x":"`), wsGoldenMessage()},
		{"content not json", Shell, bad(func(m *Message) { m.Content = json.RawMessage(`{"a":1},"channel":"control"`) })},
		{"header not json", Shell, bad(func(m *Message) { m.RawHeader = json.RawMessage(`{`) })},
		{"metadata invalid utf-8", Shell, bad(func(m *Message) { m.Metadata = json.RawMessage("{\"a\":\"\xff\"}") })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := EncodeJSONFrame(c.ch, c.msg); !errors.Is(err, ErrMalformed) {
				t.Errorf("EncodeJSONFrame: %v", err)
			}
			withBuf := *c.msg
			withBuf.Buffers = [][]byte{{1}}
			if _, err := EncodeBinaryFrame(c.ch, &withBuf); !errors.Is(err, ErrMalformed) {
				t.Errorf("EncodeBinaryFrame: %v", err)
			}
		})
	}
	if _, err := EncodeJSONFrame(Shell, wsGoldenMessage([]byte("b"))); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeJSONFrame with buffers: %v", err)
	}
	if _, err := EncodeV1Frame(Heartbeat, wsGoldenMessage()); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeV1Frame on hb: %v", err)
	}
}

var isoZ = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

func TestFillHeader(t *testing.T) {
	t.Run("nothing missing keeps the bytes", func(t *testing.T) {
		raw := `{"msg_id":"a","session":"s","username":"","date":"d","msg_type":"t","version":"5.3","subshell_id":"x"}`
		m := &Message{RawHeader: json.RawMessage(raw)}
		if err := FillHeader(m, "other"); err != nil {
			t.Fatal(err)
		}
		if string(m.RawHeader) != raw || m.Header.Session != "s" || m.Header.Username != "" {
			t.Fatalf("%s %+v", m.RawHeader, m.Header)
		}
	})
	t.Run("fills and preserves unknown fields in order", func(t *testing.T) {
		m := &Message{RawHeader: json.RawMessage(` {"zeta":[1,{"msg_id":"q"}], "msg_type":"execute_request","msg_id":null,"date":"", "alpha":"\u00e9"} `)}
		if err := FillHeader(m, `ws"session`); err != nil {
			t.Fatal(err)
		}
		h := m.Header
		if h.MsgType != "execute_request" || len(h.MsgID) != 36 || h.Session != `ws"session` ||
			h.Username != fillUsername || !isoZ.MatchString(h.Date) || h.Version != ProtocolVersion {
			t.Fatalf("header %+v", h)
		}
		wantPrefix := `{"zeta":[1,{"msg_id":"q"}],"msg_type":"execute_request","alpha":"\u00e9","msg_id":"`
		if !strings.HasPrefix(string(m.RawHeader), wantPrefix) {
			t.Fatalf("raw header %s", m.RawHeader)
		}
		// The rebuilt header says what Header says, to encoding/json too.
		var back Header
		if err := json.Unmarshal(m.RawHeader, &back); err != nil || back != h {
			t.Fatalf("raw %s parses to %+v (%v), want %+v", m.RawHeader, back, err, h)
		}
		// And it relays.
		if _, err := EncodeJSONFrame(Shell, m); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("empty header", func(t *testing.T) {
		for _, raw := range []string{"", "{}", "null"} {
			if err := FillHeader(&Message{RawHeader: json.RawMessage(raw)}, "s"); !errors.Is(err, ErrMalformed) {
				t.Errorf("%q: %v", raw, err)
			}
		}
	})
	t.Run("no session to fill", func(t *testing.T) {
		m := &Message{RawHeader: json.RawMessage(`{"msg_type":"t"}`)}
		if err := FillHeader(m, ""); !errors.Is(err, ErrMalformed) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("session given by client is kept", func(t *testing.T) {
		m := &Message{RawHeader: json.RawMessage(`{"msg_type":"t","session":"mine"}`)}
		if err := FillHeader(m, ""); err != nil || m.Header.Session != "mine" {
			t.Errorf("%+v %v", m.Header, err)
		}
	})
	t.Run("duplicates and wrong types", func(t *testing.T) {
		for _, raw := range []string{`{"msg_type":"a","msg_type":"a"}`, `{"msg_type":"a","date":1}`, `[]`, `{"msg_type":"a"`} {
			if err := FillHeader(&Message{RawHeader: json.RawMessage(raw)}, "s"); !errors.Is(err, ErrMalformed) {
				t.Errorf("%q: %v", raw, err)
			}
		}
	})
}

// --- fuzzing ---

func checkReencode(t *testing.T, ch Channel, m *Message) {
	t.Helper()
	// Every accepted message goes out again in every encoding and comes back
	// the same: exactly within its own family, up to whitespace across them.
	v1, err := EncodeV1Frame(ch, m)
	if err != nil {
		t.Fatalf("EncodeV1Frame of an accepted message: %v", err)
	}
	ch2, m2, err := DecodeV1Frame(v1)
	if err != nil || ch2 != ch {
		t.Fatalf("v1 re-decode: %q %v", ch2, err)
	}
	if err := sameMessage(m2, m, false); err != nil {
		t.Fatalf("v1 round trip: %v", err)
	}
	leg, bin, err := EncodeLegacy(ch, m)
	if err != nil {
		t.Fatalf("EncodeLegacy of an accepted message: %v", err)
	}
	ch3, m3, err := DecodeWS("", bin, leg)
	if err != nil || ch3 != ch {
		t.Fatalf("legacy re-decode: %q %v", ch3, err)
	}
	if err := sameMessage(m3, m, true); err != nil {
		t.Fatalf("legacy round trip: %v", err)
	}
	if err := FillHeader(m3, "s"); err != nil {
		t.Fatalf("FillHeader of an accepted header: %v", err)
	}
}

// checkAgainstEncodingJSON checks an accepted legacy JSON object against
// encoding/json decoding into maps (whose keys match exactly).
func checkAgainstEncodingJSON(t *testing.T, obj []byte, ch Channel, m *Message) {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(obj, &top); err != nil {
		t.Fatalf("accepted, but encoding/json says: %v", err)
	}
	var c string
	if json.Unmarshal(top["channel"], &c) != nil || Channel(c) != ch {
		t.Fatalf("channel %q vs %s", ch, top["channel"])
	}
	if !bytes.Equal(top["content"], m.Content) || !bytes.Equal(top["header"], m.RawHeader) {
		t.Fatalf("parts differ from encoding/json's")
	}
	var h map[string]any
	if err := json.Unmarshal(m.RawHeader, &h); err != nil {
		t.Fatal(err)
	}
	if h["msg_type"] != m.Header.MsgType {
		t.Fatalf("msg_type %q vs encoding/json %v", m.Header.MsgType, h["msg_type"])
	}
}

func FuzzDecodeJSONFrame(f *testing.F) {
	f.Add([]byte(wsGoldenText))
	f.Add([]byte(wsLegacyJSON))
	f.Add([]byte(`{"\u0068eader":{"msg\u005ftype":"x\u0079","date":null},"content":{},"chann\u0065l":"st\u0064in","buffers":[ ]}`))
	f.Add([]byte(`{"header":{"msg_type":"a","MSG_TYPE":"b"},"content":{"x":[1,{"y":"}"}]},"channel":"control","parent_header":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, m, err := DecodeJSONFrame(data)
		if err != nil {
			if m != nil || ch != "" || !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error %v with result %q %v", err, ch, m)
			}
			return
		}
		checkAgainstEncodingJSON(t, data, ch, m)
		frame, err := EncodeJSONFrame(ch, m)
		if err != nil {
			t.Fatal(err)
		}
		ch2, m2, err := DecodeJSONFrame(frame)
		if err != nil || ch2 != ch {
			t.Fatalf("re-decode: %v", err)
		}
		if err := sameMessage(m2, m, false); err != nil {
			t.Fatal(err)
		}
		checkReencode(t, ch, m)
	})
}

func FuzzDecodeBinaryFrame(f *testing.F) {
	f.Add([]byte(wsGoldenBinary))
	noBuf, _ := EncodeBinaryFrame(Shell, wsGoldenMessage())
	f.Add(noBuf)
	f.Add([]byte(be32(2, 12, 12+179) + wsLegacyJSON))
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, m, err := DecodeBinaryFrame(data)
		if err != nil {
			if m != nil || ch != "" || !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error %v with result %q %v", err, ch, m)
			}
			return
		}
		nbufs := binary.BigEndian.Uint32(data)
		jsonEnd := uint32(len(data))
		if nbufs > 1 {
			jsonEnd = binary.BigEndian.Uint32(data[8:])
		}
		checkAgainstEncodingJSON(t, data[binary.BigEndian.Uint32(data[4:]):jsonEnd], ch, m)
		frame, err := EncodeBinaryFrame(ch, m)
		if err != nil {
			t.Fatal(err)
		}
		ch2, m2, err := DecodeBinaryFrame(frame)
		if err != nil || ch2 != ch {
			t.Fatalf("re-decode: %v", err)
		}
		if err := sameMessage(m2, m, false); err != nil {
			t.Fatal(err)
		}
		checkReencode(t, ch, m)
	})
}

func FuzzDecodeV1Frame(f *testing.F) {
	f.Add([]byte(wsGoldenV1))
	noBuf, _ := EncodeV1Frame(Stdin, wsGoldenMessage())
	f.Add(noBuf)
	f.Add([]byte(le64(6, 56, 61, 102, 102, 106, 137) + "shell" + wsHeader + "" + "null" + wsContent))
	f.Add([]byte(le64(7, 64, 71, 89, 91, 93, 95, 95) + "control" + ` {"msg_type":"t"} ` + "{}{}{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, m, err := DecodeV1Frame(data)
		if err != nil {
			if m != nil || ch != "" || !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error %v with result %q %v", err, ch, m)
			}
			return
		}
		var h map[string]any
		if err := json.Unmarshal(m.RawHeader, &h); err != nil || h["msg_type"] != m.Header.MsgType {
			t.Fatalf("header %s: msg_type %q vs encoding/json %v (%v)", m.RawHeader, m.Header.MsgType, h["msg_type"], err)
		}
		checkReencode(t, ch, m)
	})
}

func FuzzFillHeader(f *testing.F) {
	f.Add([]byte(wsHeader), "s")
	f.Add([]byte(`{"msg_type":"t","msg_id":null,"x":{"msg_id":1},"date":""}`), "")
	f.Add([]byte(`{"msg\u005ftype":"t","username":""}`), "a\"b")
	f.Fuzz(func(t *testing.T, raw []byte, session string) {
		m := &Message{RawHeader: raw}
		if err := FillHeader(m, session); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		h := m.Header
		if h.MsgID == "" || h.Session == "" || h.Date == "" || h.Version == "" || h.MsgType == "" {
			t.Fatalf("incomplete header %+v from %q", h, raw)
		}
		if h2, _, err := parseHeaderStrict(m.RawHeader); err != nil || h2 != h {
			t.Fatalf("filled raw %q parses to %+v, %v; want %+v", m.RawHeader, h2, err, h)
		}
		var before, after map[string]json.RawMessage
		if json.Unmarshal(raw, &before) != nil || json.Unmarshal(m.RawHeader, &after) != nil {
			t.Fatalf("not an object before or after: %q -> %q", raw, m.RawHeader)
		}
		for k, v := range before {
			if _, known := headerField([]byte(k)); !known && !bytes.Equal(after[k], v) {
				t.Fatalf("unknown field %q changed: %s -> %s", k, v, after[k])
			}
		}
		again := *m
		if err := FillHeader(&again, "other"); err != nil || !bytes.Equal(again.RawHeader, m.RawHeader) {
			t.Fatalf("second fill changed %q to %q (%v)", m.RawHeader, again.RawHeader, err)
		}
	})
}

// --- benchmarks: a typical stream message from ipykernel ---

func benchStream(buffers ...[]byte) *Message {
	return &Message{
		Header:       Header{MsgID: "a5c2c5d1-7d3b2f1e8c9d4e0b9a1f2c3d_4242_17", Session: "a5c2c5d1-7d3b2f1e8c9d4e0b9a1f2c3d", Username: "sage", Date: "2026-01-01T12:00:00.123456Z", MsgType: "stream", Version: "5.3"},
		RawHeader:    json.RawMessage(`{"msg_id":"a5c2c5d1-7d3b2f1e8c9d4e0b9a1f2c3d_4242_17","msg_type":"stream","username":"sage","session":"a5c2c5d1-7d3b2f1e8c9d4e0b9a1f2c3d","date":"2026-01-01T12:00:00.123456Z","version":"5.3"}`),
		ParentHeader: json.RawMessage(`{"msg_id":"8e1f6a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b","msg_type":"execute_request","username":"","session":"0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e","date":"2026-01-01T12:00:00.100Z","version":"5.2"}`),
		Metadata:     json.RawMessage(`{}`),
		Content:      json.RawMessage(`{"name":"stdout","text":"0\n1\n4\n9\n16\n25\n36\n49\n64\n81\n"}`),
		Buffers:      buffers,
	}
}

func BenchmarkWS(b *testing.B) {
	withBuf := benchStream([]byte("0123456789abcdef0123456789abcdef"))
	// A display_data with a 1 MiB base64 image, as matplotlib sends.
	bigPNG := benchStream()
	bigPNG.Header.MsgType = "display_data"
	bigPNG.Content = json.RawMessage(`{"data":{"image/png":"` + strings.Repeat("iVBORw0KGgoAAAANSUhEUgAA", 1<<20/24) + `","text/plain":"<Figure>"},"metadata":{},"transient":{}}`)
	formats := []struct {
		name   string
		msg    *Message
		encode func(Channel, *Message) ([]byte, error)
		decode func([]byte) (Channel, *Message, error)
	}{
		{"text", benchStream(), EncodeJSONFrame, DecodeJSONFrame},
		{"binary", withBuf, EncodeBinaryFrame, DecodeBinaryFrame},
		{"v1", benchStream(), EncodeV1Frame, DecodeV1Frame},
		{"v1+buffer", withBuf, EncodeV1Frame, DecodeV1Frame},
		{"text-1MiB-png", bigPNG, EncodeJSONFrame, DecodeJSONFrame},
		{"v1-1MiB-png", bigPNG, EncodeV1Frame, DecodeV1Frame},
	}
	for _, f := range formats {
		frame, err := f.encode(IOPub, f.msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("encode/"+f.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				if _, err := f.encode(IOPub, f.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("decode/"+f.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				if _, _, err := f.decode(frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("fillheader/complete", func(b *testing.B) {
		b.ReportAllocs()
		m := benchStream()
		for b.Loop() {
			if err := FillHeader(m, "s"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
