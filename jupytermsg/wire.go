package jupytermsg

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
)

// Delimiter separates ZMQ routing identities from the message frames.
const Delimiter = "<IDS|MSG>"

// Errors returned by Decode. Messages that fail verification are never
// delivered.
var (
	ErrMalformed    = errors.New("malformed message")
	ErrBadSignature = errors.New("invalid message signature")
)

// Signer signs and verifies messages with a kernel's HMAC-SHA256 key. An
// empty key disables signing, as the protocol allows.
type Signer struct {
	key []byte
}

// NewSigner returns a Signer for the connection file's key string.
func NewSigner(key string) Signer {
	return Signer{key: []byte(key)}
}

func (s Signer) mac() hash.Hash {
	return hmac.New(sha256.New, s.key)
}

// Sign returns the hex signature of the four JSON parts.
func (s Signer) Sign(header, parent, metadata, content []byte) []byte {
	if len(s.key) == 0 {
		return []byte{}
	}
	mac := s.mac()
	mac.Write(header)
	mac.Write(parent)
	mac.Write(metadata)
	mac.Write(content)
	sum := mac.Sum(nil)
	out := make([]byte, hex.EncodedLen(len(sum)))
	hex.Encode(out, sum)
	return out
}

// Verify checks a hex signature in constant time.
func (s Signer) Verify(signature, header, parent, metadata, content []byte) bool {
	if len(s.key) == 0 {
		return len(signature) == 0
	}
	return hmac.Equal(signature, s.Sign(header, parent, metadata, content))
}

// Encode produces the multipart frames for m, prefixed by identities (or the
// IOPub topic). Nil JSON parts are sent as "{}".
func (s Signer) Encode(identities [][]byte, m *Message) [][]byte {
	parts := [4][]byte{m.RawHeader, m.ParentHeader, m.Metadata, m.Content}
	for i, p := range parts {
		if len(p) == 0 {
			parts[i] = emptyObject()
		}
	}
	frames := make([][]byte, 0, len(identities)+6+len(m.Buffers))
	frames = append(frames, identities...)
	frames = append(frames, []byte(Delimiter), s.Sign(parts[0], parts[1], parts[2], parts[3]))
	frames = append(frames, parts[:]...)
	frames = append(frames, m.Buffers...)
	return frames
}

// Decode splits received frames into identities and a verified message. The
// frames' bytes are referenced, not copied.
func (s Signer) Decode(frames [][]byte) ([][]byte, *Message, error) {
	delim := -1
	for i, f := range frames {
		if bytes.Equal(f, []byte(Delimiter)) {
			delim = i
			break
		}
	}
	if delim < 0 {
		return nil, nil, fmt.Errorf("%w: no %s delimiter in %d frames", ErrMalformed, Delimiter, len(frames))
	}
	rest := frames[delim+1:]
	if len(rest) < 5 {
		return nil, nil, fmt.Errorf("%w: %d frames after delimiter, need at least 5", ErrMalformed, len(rest))
	}
	if !s.Verify(rest[0], rest[1], rest[2], rest[3], rest[4]) {
		return nil, nil, ErrBadSignature
	}
	m := &Message{RawHeader: rest[1], ParentHeader: rest[2], Metadata: rest[3], Content: rest[4]}
	if len(rest) > 5 {
		m.Buffers = rest[5:]
	}
	if err := m.parseHeader(); err != nil {
		return nil, nil, err
	}
	return frames[:delim], m, nil
}
