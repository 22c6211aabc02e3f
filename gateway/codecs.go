package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/jupytermsg"
)

// sageCodec is the Sage-cell websocket encoding: legacy JSON text frames
// with a top-level channel. Outgoing text frames also carry "seq", the
// session sequence number a client resumes from (?since=N).
type sageCodec struct{}

func (sageCodec) subprotocols() []string     { return nil }
func (c sageCodec) forProtocol(string) codec { return c }
func (sageCodec) resumeFromStart() bool      { return true }

func (sageCodec) decode(kind int, data []byte) (jupytermsg.Channel, *jupytermsg.Message, error) {
	return jupytermsg.DecodeWS("", kind == websocket.BinaryMessage, data)
}

func (sageCodec) encode(e session.Entry) (int, []byte, error) {
	frame, err := sageJSON(e)
	return websocket.TextMessage, frame, err
}

// sageJSON is a text frame with seq; buffers (widget binary data) go as
// base64 strings, so every Sage-cell frame carries its seq and long-poll
// answers stay JSON.
func sageJSON(e session.Entry) ([]byte, error) {
	m := *e.Msg
	m.Buffers = nil
	frame, err := jupytermsg.EncodeJSONFrame(e.Channel, &m)
	if err != nil {
		return nil, err
	}
	frame = withSeq(frame, e.Seq)
	if len(e.Msg.Buffers) == 0 {
		return frame, nil
	}
	encoded := make([]string, len(e.Msg.Buffers))
	for i, b := range e.Msg.Buffers {
		encoded[i] = base64.StdEncoding.EncodeToString(b)
	}
	list, _ := json.Marshal(encoded)
	const empty = `"buffers":[]`
	at := bytes.LastIndex(frame, []byte(empty))
	if at < 0 {
		return nil, errors.New("encode buffers: frame has no buffers member")
	}
	out := make([]byte, 0, len(frame)+len(list))
	out = append(out, frame[:at]...)
	out = append(out, `"buffers":`...)
	out = append(out, list...)
	return append(out, frame[at+len(empty):]...), nil
}

// withSeq puts "seq":N first in a JSON object frame.
func withSeq(frame []byte, seq uint64) []byte {
	if !bytes.HasPrefix(frame, []byte("{")) {
		return frame
	}
	out := make([]byte, 0, len(frame)+24)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	if len(bytes.TrimSpace(frame[1:])) > 1 {
		out = append(out, ',')
	}
	return append(out, frame[1:]...)
}

func (sageCodec) problem(text, _ string) (int, []byte) {
	data, _ := json.Marshal(map[string]string{"channel": "gateway", "error": "Bad Request", "message": text})
	return websocket.TextMessage, data
}

// jupyterCodec is jupyter_server's kernel websocket: the v1 binary
// subprotocol when the client offers it, else the legacy encoding.
type jupyterCodec struct{ protocol string }

func (jupyterCodec) subprotocols() []string     { return []string{jupytermsg.WSProtocolV1} }
func (jupyterCodec) forProtocol(p string) codec { return jupyterCodec{protocol: p} }
func (jupyterCodec) resumeFromStart() bool      { return false }

func (c jupyterCodec) decode(kind int, data []byte) (jupytermsg.Channel, *jupytermsg.Message, error) {
	return jupytermsg.DecodeWS(c.protocol, kind == websocket.BinaryMessage, data)
}

func (c jupyterCodec) encode(e session.Entry) (int, []byte, error) {
	frame, binary, err := jupytermsg.EncodeWS(c.protocol, e.Channel, e.Msg)
	if err != nil {
		return 0, nil, err
	}
	if binary {
		return websocket.BinaryMessage, frame, nil
	}
	return websocket.TextMessage, frame, nil
}

// problem is told to Jupyter clients as stderr on iopub: they have no
// other place to show a gateway error. It carries the kernel's session:
// JupyterLab takes the session of every message as the kernel's.
func (c jupyterCodec) problem(text, kernelSession string) (int, []byte) {
	m, err := jupytermsg.New("stream", kernelSession, nil, session.NoticeStream(text))
	if err != nil {
		return websocket.TextMessage, nil
	}
	kind, frame, err := c.encode(session.Entry{Channel: jupytermsg.IOPub, Msg: m})
	if err != nil {
		return websocket.TextMessage, nil
	}
	return kind, frame
}
