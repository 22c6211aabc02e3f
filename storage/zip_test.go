package storage

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestZipRoundTrip(t *testing.T) {
	for _, code := range []string{"", "print(1)", "plot(sin(x), (x, 0, 2*pi))\n", "π ☃ 😀", strings.Repeat("a = 1\n", 10000)} {
		enc := ZipEncode(code)
		if strings.ContainsAny(enc, "+/") {
			t.Errorf("ZipEncode(%.20q) = %q is not URL-safe", code, enc)
		}
		got, err := ZipDecode(enc, 1<<20)
		if err != nil || got != code {
			t.Errorf("ZipDecode(ZipEncode(%.20q)) = %.20q, %v", code, got, err)
		}
	}
}

// pythonZip is what the Sage cell server's Python produces for "print(1)":
// base64.urlsafe_b64encode(zlib.compress(b"print(1)")).
const pythonZip = "eJwrKMrMK9Ew1AQADhUCsA=="

func TestZipDecode(t *testing.T) {
	bomb := func(n int) string {
		var buf bytes.Buffer
		w, _ := zlib.NewWriterLevel(&buf, zlib.BestCompression)
		_, _ = w.Write(make([]byte, n))
		_ = w.Close()
		return base64.URLEncoding.EncodeToString(buf.Bytes())
	}
	corrupt := func() string {
		raw, _ := base64.URLEncoding.DecodeString(ZipEncode("print('hello world')"))
		raw[len(raw)-1] ^= 0xff // adler32 checksum
		return base64.URLEncoding.EncodeToString(raw)
	}
	notUTF8 := func() string {
		var buf bytes.Buffer
		w := zlib.NewWriter(&buf)
		_, _ = w.Write([]byte{0xff, 0xfe})
		_ = w.Close()
		return base64.URLEncoding.EncodeToString(buf.Bytes())
	}
	tests := []struct {
		name    string
		in      string
		max     int
		want    string
		wantErr error
	}{
		{"python output", pythonZip, 100, "print(1)", nil},
		{"no padding", strings.TrimRight(pythonZip, "="), 100, "print(1)", nil},
		{"standard alphabet", base64.StdEncoding.EncodeToString(mustB64(pythonZip)), 100, "print(1)", nil},
		{"plus decoded as space", strings.ReplaceAll(base64.StdEncoding.EncodeToString(mustB64(ZipEncode("a>>>>>>>b?????"))), "+", " "), 100, "a>>>>>>>b?????", nil},
		{"exactly the limit", ZipEncode("12345"), 5, "12345", nil},
		{"one over the limit", ZipEncode("123456"), 5, "", ErrZipTooLarge},
		{"zip bomb", bomb(50 << 20), 1 << 20, "", ErrZipTooLarge},
		{"encoded input too long", strings.Repeat("A", 10000), 100, "", ErrZipTooLarge},
		{"not base64", "!!!!", 100, "", ErrZipInvalid},
		{"not zlib", base64.URLEncoding.EncodeToString([]byte("plain text")), 100, "", ErrZipInvalid},
		{"truncated", pythonZip[:12], 100, "", ErrZipInvalid},
		{"bad checksum", corrupt(), 100, "", ErrZipInvalid},
		{"not UTF-8", notUTF8(), 100, "", ErrZipInvalid},
		{"empty", "", 100, "", ErrZipInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ZipDecode(tc.in, tc.max)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Errorf("ZipDecode = %.30q, %v; want %.30q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func mustB64(s string) []byte {
	b, err := base64.URLEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func FuzzZipDecode(f *testing.F) {
	f.Add(pythonZip, 100)
	f.Add(ZipEncode(strings.Repeat("x", 5000)), 1000)
	f.Add("eJwDAAAAAAE=", 10)
	f.Add("", 0)
	f.Add("!!", 5)
	f.Fuzz(func(t *testing.T, in string, max int) {
		max %= 1 << 16
		got, err := ZipDecode(in, max)
		if err != nil {
			if !errors.Is(err, ErrZipInvalid) && !errors.Is(err, ErrZipTooLarge) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if len(got) > max && max >= 0 {
			t.Fatalf("decoded %d bytes, limit %d", len(got), max)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("decoded invalid UTF-8")
		}
		if again, err := ZipDecode(ZipEncode(got), len(got)); err != nil || again != got {
			t.Fatalf("re-encoding does not round-trip: %v", err)
		}
	})
}

func FuzzZipRoundTrip(f *testing.F) {
	f.Add("print(1)")
	f.Add("")
	f.Fuzz(func(t *testing.T, code string) {
		got, err := ZipDecode(ZipEncode(code), len(code))
		if !utf8.ValidString(code) {
			if !errors.Is(err, ErrZipInvalid) {
				t.Fatalf("invalid UTF-8 code decoded: %v", err)
			}
			return
		}
		if err != nil || got != code {
			t.Fatalf("round trip: %q, %v", got, err)
		}
	})
}
