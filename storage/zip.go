package storage

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// The Sage cell server's "zip" form of code, used in links like /?z=...: URL-safe base64 (with
// padding) of zlib-compressed UTF-8 code.

var (
	// ErrZipInvalid is returned for input that is not base64 of zlib data of UTF-8 text.
	ErrZipInvalid = errors.New("storage: invalid zip-encoded code")
	// ErrZipTooLarge is returned when the encoded or decoded code exceeds the limit.
	ErrZipTooLarge = errors.New("storage: zip-encoded code too large")
)

// ZipEncode returns the Sage cell "zip" encoding of code.
func ZipEncode(code string) string {
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	_, _ = w.Write([]byte(code)) // writes to a bytes.Buffer cannot fail
	_ = w.Close()
	return base64.URLEncoding.EncodeToString(buf.Bytes())
}

// ZipDecode decodes the Sage cell "zip" encoding, producing at most maxBytes bytes of code. It
// reads untrusted input: the encoded length is bounded before decoding, inflation stops at
// maxBytes+1 bytes whatever the compression ratio (zip bombs), and the zlib checksum is checked.
// It accepts the standard or URL-safe alphabet, with or without padding, and a space for '+'
// (what a '+' becomes when a query string is decoded as a form).
func ZipDecode(encoded string, maxBytes int) (string, error) {
	if maxBytes < 0 {
		maxBytes = 0
	}
	// Deflate expands incompressible data by 5 bytes per stored block (at most 64 KiB, often
	// 16 KiB) plus a few blocks' worth of framing, header and trailer: a longer input cannot
	// decode to at most maxBytes. The bound only needs to be generous and linear.
	maxCompressed := maxBytes + maxBytes/64 + 64
	if len(encoded) > base64.StdEncoding.EncodedLen(maxCompressed)+4 {
		return "", fmt.Errorf("%w: %d encoded bytes", ErrZipTooLarge, len(encoded))
	}
	normalized := strings.Map(func(r rune) rune {
		switch r {
		case '-':
			return '+'
		case '_':
			return '/'
		case ' ':
			return '+'
		case '=', '\n', '\r':
			return -1
		}
		return r
	}, encoded)
	compressed, err := base64.RawStdEncoding.Strict().DecodeString(normalized)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrZipInvalid, err)
	}
	zr, err := zlib.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrZipInvalid, err)
	}
	defer zr.Close()
	code, err := io.ReadAll(io.LimitReader(zr, int64(maxBytes)+1))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrZipInvalid, err)
	}
	if len(code) > maxBytes {
		return "", fmt.Errorf("%w: more than %d bytes", ErrZipTooLarge, maxBytes)
	}
	if !utf8.Valid(code) {
		return "", fmt.Errorf("%w: not UTF-8 text", ErrZipInvalid)
	}
	return string(code), nil
}
