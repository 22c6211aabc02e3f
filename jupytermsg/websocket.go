package jupytermsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Websocket encodings of Jupyter messages, as spoken by Jupyter Server
// (docs/source/developers/websocket-protocols.rst) and its clients:
//
//   - legacy text: one JSON object {"header", "parent_header", "metadata",
//     "content", "buffers", "channel"} (Sage Cell, the classic notebook,
//     Jupyter Server's gateway client, JupyterLab without a subprotocol);
//   - legacy binary, for messages with buffers: big-endian uint32 nbufs
//     (1 + number of buffers), nbufs uint32 offsets from the frame start,
//     the JSON object (without "buffers") at the first offset, then the
//     buffers, the last one running to the end of the frame;
//   - v1.kernel.websocket.jupyter.org, always binary: little-endian uint64
//     offset_number, then offset_number uint64 offsets; the parts between
//     consecutive offsets are channel, header, parent_header, metadata,
//     content, buffers...; the first offset is 8*(1+offset_number) and the last
//     one is the frame length, so offset_number = 6 + number of buffers.
//
// Decoders do not copy: the returned Message's parts and buffers are
// sub-slices of the frame (capacity-limited, so appending to one never
// overwrites another), and the frame must not be modified afterwards.
// Counts and offsets read from a frame are checked against its length
// before anything is sized by them; a decoded message costs a few small
// allocations plus one slice header per buffer (at most MaxWSBuffers, and a
// frame needs 4 or 8 bytes of offset table per buffer). Bounding the frame
// length is the caller's job (gorilla/websocket: Conn.SetReadLimit).
// Encoders build frames by concatenating the raw parts; they never
// re-marshal them (the legacy JSON encoders do check that each part is valid
// UTF-8 JSON, since the parts are spliced into one JSON text).

// WSProtocolV1 is the websocket subprotocol of the v1 binary encoding. The
// empty string names the legacy encoding.
const WSProtocolV1 = "v1.kernel.websocket.jupyter.org"

// MaxWSBuffers is the largest number of binary buffers a decoded frame may
// carry.
const MaxWSBuffers = 4096

// ErrBadFrame is wrapped by every error a websocket decoder returns.
var ErrBadFrame = errors.New("bad websocket frame")

func badFrame(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadFrame}, args...)...)
}

// DecodeJSONFrame decodes a legacy text frame. The channel must be one of
// shell, iopub, stdin, control; the header must be an object with a msg_type
// (other fields may be missing: see FillHeader); parent_header and metadata
// default to {}; content must be an object; "buffers" may be absent, null or
// [] (the text protocol carries no buffers). Other top-level keys (such as
// the msg_id and msg_type copies Jupyter Server adds) are ignored.
func DecodeJSONFrame(data []byte) (Channel, *Message, error) {
	return decodeLegacyJSON(data, "text frame")
}

// DecodeBinaryFrame decodes a legacy binary frame (Jupyter Server's
// serialize_binary_message). The JSON part is checked as in DecodeJSONFrame;
// a frame with no buffers (nbufs = 1) is accepted.
func DecodeBinaryFrame(data []byte) (Channel, *Message, error) {
	if len(data) < 4 {
		return "", nil, badFrame("binary frame of %d bytes", len(data))
	}
	nbufs := uint64(binary.BigEndian.Uint32(data))
	if nbufs < 1 || nbufs-1 > MaxWSBuffers {
		return "", nil, badFrame("binary frame: nbufs %d not in [1, %d]", nbufs, MaxWSBuffers+1)
	}
	hdr := 4 * (1 + nbufs)
	size := uint64(len(data))
	if size < hdr {
		return "", nil, badFrame("binary frame: %d offsets need %d bytes, frame has %d", nbufs, hdr, size)
	}
	offset := func(i uint64) uint64 {
		if i == nbufs {
			return size
		}
		return uint64(binary.BigEndian.Uint32(data[4+4*i:]))
	}
	prev := hdr
	for i := range nbufs {
		o := offset(i)
		if o < prev || o > size {
			return "", nil, badFrame("binary frame: offset %d is %d, want within [%d, %d]", i, o, prev, size)
		}
		prev = o
	}
	ch, m, err := decodeLegacyJSON(data[offset(0):offset(1)], "binary frame")
	if err != nil {
		return "", nil, err
	}
	if nbufs > 1 {
		m.Buffers = make([][]byte, nbufs-1)
		for i := range m.Buffers {
			a, b := offset(uint64(i)+1), offset(uint64(i)+2)
			m.Buffers[i] = data[a:b:b]
		}
	}
	return ch, m, nil
}

// DecodeV1Frame decodes a v1.kernel.websocket.jupyter.org frame. Offsets must
// be non-decreasing, start at or after the offset table, and the last one
// must equal the frame length. The JSON parts are checked as in
// DecodeJSONFrame (an empty or null parent_header or metadata becomes {}).
func DecodeV1Frame(data []byte) (Channel, *Message, error) {
	if len(data) < 8 {
		return "", nil, badFrame("v1 frame of %d bytes", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n < 6 || n-6 > MaxWSBuffers {
		return "", nil, badFrame("v1 frame: offset_number %d not in [6, %d]", n, 6+MaxWSBuffers)
	}
	hdr := 8 * (1 + n)
	size := uint64(len(data))
	if size < hdr {
		return "", nil, badFrame("v1 frame: %d offsets need %d bytes, frame has %d", n, hdr, size)
	}
	offset := func(i uint64) uint64 { return binary.LittleEndian.Uint64(data[8+8*i:]) }
	prev := hdr
	for i := range n {
		o := offset(i)
		if o < prev || o > size {
			return "", nil, badFrame("v1 frame: offset %d is %d, want within [%d, %d]", i, o, prev, size)
		}
		prev = o
	}
	if prev != size {
		return "", nil, badFrame("v1 frame: last offset %d is not the frame length %d", prev, size)
	}
	part := func(i uint64) []byte {
		a, b := offset(i), offset(i+1)
		return data[a:b:b]
	}
	ch, ok := channelOf(part(0))
	if !ok {
		return "", nil, badFrame("v1 frame: channel %q", part(0))
	}
	var parts [4][]byte
	for i := range parts {
		p := part(uint64(i) + 1)
		if (i == 1 || i == 2) && len(trimJSONSpace(p)) == 0 {
			continue // an empty parent_header or metadata is taken as null: {}
		}
		if !validJSON(p) {
			return "", nil, badFrame("v1 frame: %s is not valid UTF-8 JSON", partNames[i])
		}
		parts[i] = p
	}
	m, err := newDecodedMessage(parts, "v1 frame")
	if err != nil {
		return "", nil, err
	}
	if n > 6 {
		m.Buffers = make([][]byte, n-6)
		for i := range m.Buffers {
			m.Buffers[i] = part(uint64(i) + 5)
		}
	}
	return ch, m, nil
}

var partNames = [4]string{"header", "parent_header", "metadata", "content"}

// decodeLegacyJSON decodes the JSON object of a legacy frame.
func decodeLegacyJSON(data []byte, what string) (Channel, *Message, error) {
	if !validJSON(data) {
		return "", nil, badFrame("%s is not valid UTF-8 JSON", what)
	}
	obj := trimJSONSpace(data)
	var parts [4][]byte
	var channel []byte
	var seen uint8
	it := newMemberIter(obj)
	for it.next() {
		var bit uint8
		idx := -1
		switch string(it.key) {
		case "header":
			bit, idx = 1, 0
		case "parent_header":
			bit, idx = 2, 1
		case "metadata":
			bit, idx = 4, 2
		case "content":
			bit, idx = 8, 3
		case "channel":
			bit = 16
			channel = it.value
		case "buffers":
			bit = 32
			if !isJSONNull(it.value) && !isEmptyJSONArray(it.value) {
				return "", nil, badFrame("%s: buffers must be absent, null or []", what)
			}
		default:
			continue
		}
		if seen&bit != 0 {
			return "", nil, badFrame("%s: duplicate key %q", what, it.key)
		}
		seen |= bit
		if idx >= 0 {
			parts[idx] = it.value
		}
	}
	if it.err != nil {
		return "", nil, badFrame("%s is not a JSON object", what)
	}
	if channel == nil {
		return "", nil, badFrame("%s has no channel", what)
	}
	ch, ok := Channel(""), len(channel) >= 2 && channel[0] == '"'
	if ok {
		if inner := channel[1 : len(channel)-1]; bytes.IndexByte(inner, '\\') < 0 {
			ch, ok = channelOf(inner)
		} else {
			s, _ := unquoteJSON(channel)
			ch, ok = channelOf([]byte(s))
		}
	}
	if !ok {
		return "", nil, badFrame("%s: channel %s", what, channel)
	}
	m, err := newDecodedMessage(parts, what)
	if err != nil {
		return "", nil, err
	}
	return ch, m, nil
}

// channelOf returns the message channel named b, without allocating.
func channelOf(b []byte) (Channel, bool) {
	for _, c := range [...]Channel{Shell, IOPub, Stdin, Control} {
		if string(b) == string(c) {
			return c, true
		}
	}
	return "", false
}

// newDecodedMessage checks the four JSON parts (each valid JSON or nil for
// absent) and parses the header.
func newDecodedMessage(parts [4][]byte, what string) (*Message, error) {
	if parts[0] == nil || !isJSONObject(parts[0]) {
		return nil, badFrame("%s: header is missing or not an object", what)
	}
	for i := 1; i <= 2; i++ {
		if parts[i] == nil || isJSONNull(trimJSONSpace(parts[i])) {
			parts[i] = emptyObject()
		} else if !isJSONObject(parts[i]) {
			return nil, badFrame("%s: %s is not an object", what, partNames[i])
		}
	}
	if parts[3] == nil || !isJSONObject(parts[3]) {
		return nil, badFrame("%s: content is missing or not an object", what)
	}
	h, _, err := parseHeaderStrict(parts[0])
	if err != nil {
		return nil, badFrame("%s: %v", what, err)
	}
	if h.MsgType == "" {
		return nil, badFrame("%s: header has no msg_type", what)
	}
	return &Message{Header: h, RawHeader: parts[0], ParentHeader: parts[1], Metadata: parts[2], Content: parts[3]}, nil
}

// jsonParts returns the four JSON parts of m, with empty ones as {}.
func jsonParts(m *Message) [4][]byte {
	parts := [4][]byte{m.RawHeader, m.ParentHeader, m.Metadata, m.Content}
	for i, p := range parts {
		if len(p) == 0 {
			parts[i] = emptyObject()
		}
	}
	return parts
}

// appendLegacyJSON appends the legacy JSON object for m. Because the parts
// are concatenated, each must be valid UTF-8 JSON, or the frame would be
// broken (and browsers close a websocket on a text frame that is not UTF-8).
func appendLegacyJSON(dst []byte, ch Channel, m *Message, withBuffers bool) ([]byte, error) {
	if !ch.Valid() {
		return nil, fmt.Errorf("%w: channel %q", ErrMalformed, ch)
	}
	parts := jsonParts(m)
	n := 0
	for i, p := range parts {
		if !validJSON(p) {
			return nil, fmt.Errorf("%w: %s is not valid UTF-8 JSON", ErrMalformed, partNames[i])
		}
		n += len(p)
	}
	if dst == nil {
		dst = make([]byte, 0, n+len(m.Header.MsgID)+len(m.Header.MsgType)+128)
	}
	// Jupyter Server's legacy frames also copy msg_id and msg_type to the
	// top level (jupyter_client's Session.deserialize); some clients read them.
	dst = append(dst, `{"header":`...)
	dst = append(dst, parts[0]...)
	dst = append(dst, `,"msg_id":`...)
	dst = appendJSONString(dst, m.Header.MsgID)
	dst = append(dst, `,"msg_type":`...)
	dst = appendJSONString(dst, m.Header.MsgType)
	dst = append(dst, `,"parent_header":`...)
	dst = append(dst, parts[1]...)
	dst = append(dst, `,"metadata":`...)
	dst = append(dst, parts[2]...)
	dst = append(dst, `,"content":`...)
	dst = append(dst, parts[3]...)
	if withBuffers {
		dst = append(dst, `,"buffers":[]`...)
	}
	dst = append(dst, `,"channel":"`...)
	dst = append(dst, ch...)
	return append(dst, `"}`...), nil
}

// EncodeJSONFrame encodes m as a legacy text frame. The raw parts are copied
// verbatim; each must be valid UTF-8 JSON. A message with buffers cannot be
// sent as text: use EncodeBinaryFrame (or EncodeLegacy, which chooses).
func EncodeJSONFrame(ch Channel, m *Message) ([]byte, error) {
	if len(m.Buffers) > 0 {
		return nil, fmt.Errorf("%w: %d buffers need a binary frame", ErrMalformed, len(m.Buffers))
	}
	return appendLegacyJSON(nil, ch, m, true)
}

// EncodeBinaryFrame encodes m as a legacy binary frame (Jupyter Server's
// serialize_binary_message). JupyterLab rejects such frames without
// buffers, so send messages without buffers with EncodeJSONFrame.
func EncodeBinaryFrame(ch Channel, m *Message) ([]byte, error) {
	nbufs := 1 + len(m.Buffers)
	hdr := 4 * (1 + nbufs)
	size := hdr + 128 + len(m.Header.MsgID) + len(m.Header.MsgType)
	for _, p := range jsonParts(m) {
		size += len(p)
	}
	for _, b := range m.Buffers {
		size += len(b)
	}
	frame := make([]byte, hdr, size)
	binary.BigEndian.PutUint32(frame, uint32(nbufs))
	binary.BigEndian.PutUint32(frame[4:], uint32(hdr))
	frame, err := appendLegacyJSON(frame, ch, m, false)
	if err != nil {
		return nil, err
	}
	for i, b := range m.Buffers {
		if uint64(len(frame)) > math.MaxUint32 {
			return nil, fmt.Errorf("%w: binary frame offsets beyond 4 GiB", ErrMalformed)
		}
		binary.BigEndian.PutUint32(frame[8+4*i:], uint32(len(frame)))
		frame = append(frame, b...)
	}
	return frame, nil
}

// EncodeV1Frame encodes m in the v1.kernel.websocket.jupyter.org encoding.
// The parts are length-delimited, so they are copied without validation:
// a kernel's frames go out byte for byte. Empty JSON parts are sent as {}.
func EncodeV1Frame(ch Channel, m *Message) ([]byte, error) {
	if !ch.Valid() {
		return nil, fmt.Errorf("%w: channel %q", ErrMalformed, ch)
	}
	parts := jsonParts(m)
	n := 6 + len(m.Buffers)
	hdr := 8 * (1 + n)
	size := hdr + len(ch)
	for _, p := range parts {
		size += len(p)
	}
	for _, b := range m.Buffers {
		size += len(b)
	}
	frame := make([]byte, hdr, size)
	binary.LittleEndian.PutUint64(frame, uint64(n))
	put := func(i int) { binary.LittleEndian.PutUint64(frame[8+8*i:], uint64(len(frame))) }
	put(0)
	frame = append(frame, ch...)
	for i, p := range parts {
		put(i + 1)
		frame = append(frame, p...)
	}
	for i, b := range m.Buffers {
		put(i + 5)
		frame = append(frame, b...)
	}
	put(n - 1)
	return frame, nil
}

// EncodeLegacy encodes m in the legacy encoding: a text frame, or a binary
// frame when m has buffers. binary tells which websocket message type to send.
func EncodeLegacy(ch Channel, m *Message) (frame []byte, binary bool, err error) {
	if len(m.Buffers) > 0 {
		frame, err = EncodeBinaryFrame(ch, m)
		return frame, true, err
	}
	frame, err = EncodeJSONFrame(ch, m)
	return frame, false, err
}

// EncodeWS encodes m for a websocket that negotiated subprotocol ("" for
// legacy, or WSProtocolV1). binary tells which websocket message type to send.
func EncodeWS(subprotocol string, ch Channel, m *Message) (frame []byte, binary bool, err error) {
	switch subprotocol {
	case "":
		return EncodeLegacy(ch, m)
	case WSProtocolV1:
		frame, err = EncodeV1Frame(ch, m)
		return frame, true, err
	}
	return nil, false, fmt.Errorf("unknown kernel websocket subprotocol %q", subprotocol)
}

// DecodeWS decodes a websocket message received on a connection that
// negotiated subprotocol ("" for legacy, or WSProtocolV1); binary is true for
// a binary websocket message. v1 accepts binary messages only.
func DecodeWS(subprotocol string, binary bool, data []byte) (Channel, *Message, error) {
	switch {
	case subprotocol == "" && binary:
		return DecodeBinaryFrame(data)
	case subprotocol == "":
		return DecodeJSONFrame(data)
	case subprotocol == WSProtocolV1 && binary:
		return DecodeV1Frame(data)
	case subprotocol == WSProtocolV1:
		return "", nil, badFrame("text message on a %s websocket", WSProtocolV1)
	}
	return "", nil, fmt.Errorf("unknown kernel websocket subprotocol %q", subprotocol)
}

// fillUsername is the username FillHeader supplies, as New does.
const fillUsername = "cellgate"

// FillHeader supplies the header fields a client left out: msg_id (a new
// UUID), session (the given one), username, date (now, ISO 8601 with Z) and
// version (ProtocolVersion). A field counts as missing when it is absent,
// null or "" (username: absent or null). The header is rebuilt only when
// something is missing; its other members keep their bytes and order, and
// the new members are appended. msg_type cannot be made up: a header without
// one is an error, as is a missing session when session is "".
func FillHeader(m *Message, session string) error {
	raw := m.RawHeader
	if len(trimJSONSpace(raw)) == 0 {
		raw = emptyObject()
	}
	h, strs, err := strictHeader(raw)
	if err != nil {
		return err
	}
	var missing uint8
	for i, f := range headerFields {
		if (f.bit == hUsername && strs&hUsername == 0) || (f.bit != hUsername && *h.field(i) == "") {
			missing |= f.bit
		}
	}
	if missing == 0 {
		m.Header = h
		return nil
	}
	if missing&hSession != 0 && session == "" {
		return fmt.Errorf("%w: header has no session and none was given", ErrMalformed)
	}
	if missing&hSession != 0 && !utf8.ValidString(session) {
		return fmt.Errorf("%w: session %q is not UTF-8", ErrMalformed, session)
	}
	fill := [...]string{uuid.NewString(), session, fillUsername, FormatDate(time.Now()), "", ProtocolVersion}
	obj := trimJSONSpace(raw)
	out := make([]byte, 0, len(obj)+160+len(session))
	out = append(out, '{')
	it := newMemberIter(obj)
	for it.next() {
		if i, ok := headerField(it.key); ok && missing&headerFields[i].bit != 0 {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, obj[it.start:it.end]...)
	}
	for i, f := range headerFields {
		if missing&f.bit == 0 {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, f.name...)
		out = append(out, `":`...)
		out = appendJSONString(out, fill[i])
		*h.field(i) = fill[i]
	}
	m.Header, m.RawHeader = h, append(out, '}')
	return nil
}
