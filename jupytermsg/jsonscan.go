package jupytermsg

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf8"
)

// A small scanner for the top level of JSON objects. It lets the websocket
// decoders take the members of a frame (and of a header) as exact sub-slices
// of the received bytes, match keys exactly (encoding/json matches struct
// fields case-insensitively, which would let "MSG_TYPE" shadow the "msg_type"
// a kernel reads), and notice duplicate keys. Its input must already have
// passed json.Valid; it still checks every index, so a broken invariant gives
// an error, never a panic.

var errScan = errors.New("malformed JSON object")

func isJSONSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

func skipJSONSpace(d []byte, i int) int {
	for i < len(d) && isJSONSpace(d[i]) {
		i++
	}
	return i
}

// trimJSONSpace removes JSON whitespace from both ends.
func trimJSONSpace(d []byte) []byte {
	i := skipJSONSpace(d, 0)
	j := len(d)
	for j > i && isJSONSpace(d[j-1]) {
		j--
	}
	return d[i:j]
}

// skipString returns the index just past the string starting at d[i] == '"'.
func skipString(d []byte, i int) (int, bool) {
	for i++; i < len(d); i++ {
		switch d[i] {
		case '\\':
			i++
		case '"':
			return i + 1, true
		}
	}
	return 0, false
}

// skipValue returns the index just past the value starting at d[i].
func skipValue(d []byte, i int) (int, bool) {
	if i >= len(d) {
		return 0, false
	}
	switch d[i] {
	case '"':
		return skipString(d, i)
	case '{', '[':
		depth := 0
		for i < len(d) {
			switch d[i] {
			case '"':
				var ok bool
				if i, ok = skipString(d, i); !ok {
					return 0, false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
			i++
		}
		return 0, false
	default: // number, true, false, null
		j := i
		for j < len(d) && d[j] != ',' && d[j] != '}' && d[j] != ']' && !isJSONSpace(d[j]) {
			j++
		}
		return j, j > i
	}
}

// memberIter walks the members of a valid, trimmed JSON object.
type memberIter struct {
	d     []byte
	i     int
	done  bool
	err   error
	key   []byte // unescaped key
	start int    // index of the key's opening quote
	end   int    // index just past the value
	value []byte // the value's exact bytes
}

func newMemberIter(obj []byte) memberIter {
	it := memberIter{d: obj}
	if len(obj) == 0 || obj[0] != '{' {
		it.done, it.err = true, errScan
		return it
	}
	it.i = skipJSONSpace(obj, 1)
	if it.i < len(obj) && obj[it.i] == '}' {
		it.done = true
		if skipJSONSpace(obj, it.i+1) != len(obj) {
			it.err = errScan
		}
	}
	return it
}

func (it *memberIter) fail() bool {
	it.done, it.err = true, errScan
	return false
}

func (it *memberIter) next() bool {
	if it.done {
		return false
	}
	d, i := it.d, it.i
	if i >= len(d) || d[i] != '"' {
		return it.fail()
	}
	kend, ok := skipString(d, i)
	if !ok {
		return it.fail()
	}
	it.start, it.key = i, d[i+1:kend-1]
	if bytes.IndexByte(it.key, '\\') >= 0 {
		var k string
		if json.Unmarshal(d[i:kend], &k) != nil {
			return it.fail()
		}
		it.key = []byte(k)
	}
	i = skipJSONSpace(d, kend)
	if i >= len(d) || d[i] != ':' {
		return it.fail()
	}
	i = skipJSONSpace(d, i+1)
	vend, ok := skipValue(d, i)
	if !ok {
		return it.fail()
	}
	it.value, it.end = d[i:vend:vend], vend
	i = skipJSONSpace(d, vend)
	switch {
	case i < len(d) && d[i] == ',':
		it.i = skipJSONSpace(d, i+1)
	case i < len(d) && d[i] == '}' && skipJSONSpace(d, i+1) == len(d):
		it.done = true
	default:
		return it.fail()
	}
	return true
}

func isJSONNull(v []byte) bool { return string(v) == "null" }

// isEmptyJSONArray reports whether v (a valid JSON value) is [].
func isEmptyJSONArray(v []byte) bool {
	return len(v) >= 2 && v[0] == '[' && skipJSONSpace(v, 1) == len(v)-1
}

// isJSONObject reports whether v, trimmed, starts an object. For input that
// passed json.Valid this means v is an object.
func isJSONObject(v []byte) bool {
	v = trimJSONSpace(v)
	return len(v) > 0 && v[0] == '{'
}

// validJSON checks that b is one well-formed JSON value in UTF-8.
func validJSON(b []byte) bool {
	return utf8.Valid(b) && json.Valid(b)
}

// unquoteJSON returns the unescaped text of the JSON string literal v.
func unquoteJSON(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// Bits naming the header fields cellgate reads.
const (
	hMsgID uint8 = 1 << iota
	hSession
	hUsername
	hDate
	hMsgType
	hVersion
)

var headerFields = [...]struct {
	name string
	bit  uint8
}{
	{"msg_id", hMsgID},
	{"session", hSession},
	{"username", hUsername},
	{"date", hDate},
	{"msg_type", hMsgType},
	{"version", hVersion},
}

func headerField(key []byte) (int, bool) {
	for i, f := range headerFields {
		if string(key) == f.name {
			return i, true
		}
	}
	return 0, false
}

func (h *Header) field(i int) *string {
	switch i {
	case 0:
		return &h.MsgID
	case 1:
		return &h.Session
	case 2:
		return &h.Username
	case 3:
		return &h.Date
	case 4:
		return &h.MsgType
	default:
		return &h.Version
	}
}

// parseHeaderStrict reads the known fields of raw, which must be a valid
// JSON object: keys match exactly, a known key may appear once, and its value
// must be a string or null (null counts as absent). strs has a bit set for
// each known field present as a string (possibly empty).
func parseHeaderStrict(raw []byte) (h Header, strs uint8, err error) {
	obj := trimJSONSpace(raw)
	var vals [len(headerFields)][]byte // raw string literals
	var seen uint8
	total := 0
	it := newMemberIter(obj)
	for it.next() {
		i, ok := headerField(it.key)
		if !ok {
			continue
		}
		bit := headerFields[i].bit
		if seen&bit != 0 {
			return Header{}, 0, errors.New("duplicate header field " + headerFields[i].name)
		}
		seen |= bit
		if isJSONNull(it.value) {
			continue
		}
		if len(it.value) == 0 || it.value[0] != '"' {
			return Header{}, 0, errors.New("header field " + headerFields[i].name + " is not a string")
		}
		strs |= bit
		vals[i] = it.value
		total += len(it.value)
	}
	if it.err != nil {
		return Header{}, 0, errors.New("header is not a JSON object")
	}
	// One allocation for all six strings in the common, unescaped case.
	var sb strings.Builder
	sb.Grow(total)
	var ends [len(headerFields)]int
	var escaped [len(headerFields)]*string
	for i, v := range vals {
		if len(v) >= 2 && bytes.IndexByte(v[1:len(v)-1], '\\') >= 0 {
			s, ok := unquoteJSON(v)
			if !ok {
				return Header{}, 0, errors.New("bad string in header field " + headerFields[i].name)
			}
			escaped[i] = &s
		} else if len(v) >= 2 {
			sb.Write(v[1 : len(v)-1])
		}
		ends[i] = sb.Len()
	}
	all, start := sb.String(), 0
	for i := range vals {
		if escaped[i] != nil {
			*h.field(i) = *escaped[i]
		} else {
			*h.field(i) = all[start:ends[i]]
		}
		start = ends[i]
	}
	return h, strs, nil
}
