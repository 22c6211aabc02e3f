// Package jupytermsg implements the Jupyter messaging protocol (v5.3+): the
// message model, the signed multipart ZMQ framing, connection files,
// kernelspecs and the websocket encodings used by Jupyter clients.
package jupytermsg

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// ProtocolVersion is the messaging protocol version cellgate speaks.
const ProtocolVersion = "5.3"

// Channel names a Jupyter socket.
type Channel string

// The Jupyter channels.
const (
	Shell     Channel = "shell"
	IOPub     Channel = "iopub"
	Stdin     Channel = "stdin"
	Control   Channel = "control"
	Heartbeat Channel = "hb"
)

// Valid reports whether c is a channel that carries messages.
func (c Channel) Valid() bool {
	switch c {
	case Shell, IOPub, Stdin, Control:
		return true
	}
	return false
}

// Header is the parsed view of a message header used for routing. The raw
// bytes are kept beside it in Message so unknown fields survive relaying.
type Header struct {
	MsgID    string `json:"msg_id"`
	Session  string `json:"session"`
	Username string `json:"username"`
	Date     string `json:"date"`
	MsgType  string `json:"msg_type"`
	Version  string `json:"version"`
}

// Message is one Jupyter message. The four JSON parts are kept as the exact
// bytes that were received (or built), because the signature covers those
// bytes and relays must not reorder or drop fields they do not know.
type Message struct {
	Header       Header
	RawHeader    json.RawMessage
	ParentHeader json.RawMessage
	Metadata     json.RawMessage
	Content      json.RawMessage
	Buffers      [][]byte
}

// emptyObject returns a new "{}". A fresh slice each time, because callers
// own the parts of the messages they get and may write to them.
func emptyObject() json.RawMessage { return json.RawMessage{'{', '}'} }

// NewHeader returns a header with a fresh msg_id and the current time.
func NewHeader(msgType, session, username string) Header {
	return Header{
		MsgID:    uuid.NewString(),
		Session:  session,
		Username: username,
		Date:     FormatDate(time.Now()),
		MsgType:  msgType,
		Version:  ProtocolVersion,
	}
}

// FormatDate renders t the way Jupyter expects: ISO 8601, UTC, with Z.
func FormatDate(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000Z")
}

// New builds a message with a fresh header. parent may be nil.
func New(msgType, session string, parent *Message, content any) (*Message, error) {
	m := &Message{Header: NewHeader(msgType, session, "cellgate"), ParentHeader: emptyObject(), Metadata: emptyObject()}
	if parent != nil {
		m.ParentHeader = parent.RawHeader
	}
	var err error
	if m.RawHeader, err = json.Marshal(m.Header); err != nil {
		return nil, fmt.Errorf("marshal header: %w", err)
	}
	if content == nil {
		m.Content = emptyObject()
	} else if raw, ok := content.(json.RawMessage); ok {
		m.Content = raw
	} else if m.Content, err = json.Marshal(content); err != nil {
		return nil, fmt.Errorf("marshal %s content: %w", msgType, err)
	}
	return m, nil
}

// SetHeader replaces the header and its raw bytes.
func (m *Message) SetHeader(h Header) error {
	raw, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("marshal header: %w", err)
	}
	m.Header, m.RawHeader = h, raw
	return nil
}

// ParentMsgID returns the msg_id of the parent header, or "" if none.
func (m *Message) ParentMsgID() string {
	return m.Parent().MsgID
}

// Parent parses the parent header; an empty or malformed one gives a zero
// Header. Keys match exactly, as in the header itself, so a "MSG_ID" cannot
// pass for the msg_id that routing relies on.
func (m *Message) Parent() Header {
	raw := trimJSONSpace(m.ParentHeader)
	if len(raw) <= 2 || !validJSON(raw) || !isJSONObject(raw) {
		return Header{}
	}
	h, _, err := parseHeaderStrict(raw)
	if err != nil {
		return Header{}
	}
	return h
}

// DecodeContent unmarshals the content into v.
func (m *Message) DecodeContent(v any) error {
	if err := json.Unmarshal(m.Content, v); err != nil {
		return fmt.Errorf("decode %s content: %w", m.Header.MsgType, err)
	}
	return nil
}

// parseHeader fills Header from RawHeader; see strictHeader.
func (m *Message) parseHeader() error {
	if len(trimJSONSpace(m.RawHeader)) == 0 {
		return fmt.Errorf("%w: empty header", ErrMalformed)
	}
	h, _, err := strictHeader(m.RawHeader)
	if err != nil {
		return err
	}
	m.Header = h
	return nil
}

// strictHeader parses a header with the rules every decoder here uses: a
// JSON object (not null), keys matched exactly, each known key at most once
// and a string, and a msg_type. encoding/json would take null for an empty
// header and "MSG_TYPE" for msg_type, so the gateway could route a message
// by a field the kernel then reads differently.
func strictHeader(raw []byte) (Header, uint8, error) {
	if !validJSON(raw) || !isJSONObject(raw) {
		return Header{}, 0, fmt.Errorf("%w: header is not a JSON object", ErrMalformed)
	}
	h, strs, err := parseHeaderStrict(raw)
	if err != nil {
		return Header{}, 0, fmt.Errorf("%w: header: %w", ErrMalformed, err)
	}
	if h.MsgType == "" {
		return Header{}, 0, fmt.Errorf("%w: header has no msg_type", ErrMalformed)
	}
	return h, strs, nil
}
