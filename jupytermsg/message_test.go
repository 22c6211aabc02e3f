package jupytermsg

import (
	"encoding/json"
	"testing"
)

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

func TestParentIsStrict(t *testing.T) {
	for parent, want := range map[string]string{
		`{"msg_id":"p1","msg_type":"execute_request"}`: "p1",
		`{"MSG_ID":"p1"}`:                "",
		`{"msg_id":"p1","msg_id":"p2"}`:  "",
		`{"msg_id":3}`:                   "",
		`null`:                           "",
		`{}`:                             "",
		` {"msg_id" : "p1"} `:            "p1",
		`{"msg_id":"p1","extra":[1,{}]}`: "p1",
	} {
		m := &Message{ParentHeader: json.RawMessage(parent)}
		if got := m.ParentMsgID(); got != want {
			t.Errorf("ParentMsgID of %s = %q, want %q", parent, got, want)
		}
	}
}

// TestNewMessagesShareNoBytes: a caller owns the message New returns and
// may write into its parts; that must not reach the next message.
func TestNewMessagesShareNoBytes(t *testing.T) {
	first, err := New("status", "s", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range [][]byte{first.ParentHeader, first.Metadata, first.Content} {
		part[0], part[1] = '[', ']'
	}
	second, err := New("status", "s", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, part := range map[string][]byte{"parent": second.ParentHeader, "metadata": second.Metadata, "content": second.Content} {
		if string(part) != "{}" {
			t.Errorf("%s of a new message = %s", name, part)
		}
	}
	frames := NewSigner("").Encode(nil, &Message{RawHeader: second.RawHeader})
	frames[3][0] = 'x'
	if again := NewSigner("").Encode(nil, &Message{RawHeader: second.RawHeader}); string(again[3]) != "{}" {
		t.Errorf("Encode filled an empty part with %s", again[3])
	}
}
