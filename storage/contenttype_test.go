package storage

import (
	"mime"
	"path"
	"strings"
	"testing"
)

func TestDetectContentType(t *testing.T) {
	tests := []struct {
		name string
		head []byte
		want string
	}{
		{"plot.png", []byte("\x89PNG\r\n\x1a\n...."), "image/png"},
		{"PLOT.PNG", nil, "image/png"},
		{"noext", []byte("\x89PNG\r\n\x1a\n...."), "image/png"},
		{"data.csv", []byte("a,b\n1,2\n"), "text/csv; charset=utf-8"},
		{"data.csv", []byte("a,b\n\xff\xfe"), "text/csv"},
		{"README", []byte("hello ☃"), "text/plain; charset=utf-8"},
		{"README", []byte("cut rune \xe2\x98"), "text/plain; charset=utf-8"},
		{"blob", []byte{0, 1, 2, 3}, "application/octet-stream"},
		{"doc.pdf", []byte("%PDF-1.7"), "application/pdf"},
		{"page.html", []byte("<script>"), "text/html; charset=utf-8"},
	}
	for _, tc := range tests {
		if got := detectContentType(tc.name, tc.head); got != tc.want {
			t.Errorf("detectContentType(%q, %q) = %q, want %q", tc.name, tc.head, got, tc.want)
		}
	}
}

func FuzzDetectContentType(f *testing.F) {
	f.Add("a.png", []byte("\x89PNG"))
	f.Add("x", []byte("\xe2\x98"))
	f.Add("data.CSV", []byte("a,b\n"))
	f.Add("page.html", []byte("\x00<script>"))
	f.Add("blob", []byte("%PDF-1.4"))
	f.Fuzz(func(t *testing.T, name string, head []byte) {
		got := detectContentType(name, head)
		mediaType, params, err := mime.ParseMediaType(got)
		if err != nil {
			t.Fatalf("%q is not a media type: %v", got, err)
		}
		// The charset is claimed exactly for text that looks like UTF-8, and is the only parameter.
		wantCharset := strings.HasPrefix(mediaType, "text/") && looksLikeUTF8Text(head)
		if charset, ok := params["charset"]; ok != wantCharset || (ok && charset != "utf-8") || len(params) > 1 {
			t.Errorf("detectContentType(%q, %q) = %q: charset should be there iff the text is UTF-8", name, head, got)
		}
		// A known extension decides, whatever the content; content decides only without one.
		if ext, ok := extensionContentType(strings.ToLower(path.Ext(name))); ok {
			if mediaType != ext {
				t.Errorf("detectContentType(%q, ...) = %q, want %q from the extension", name, got, ext)
			}
			return
		}
		switch magic, ok := magicContentType(head); {
		case ok:
			if got != magic {
				t.Errorf("detectContentType(%q, %q) = %q, want %q from the content", name, head, got, magic)
			}
		case looksLikeUTF8Text(head):
			if got != "text/plain; charset=utf-8" {
				t.Errorf("detectContentType(%q, %q) = %q, want text/plain", name, head, got)
			}
		default:
			// Never a type a browser might render or run.
			if got != "application/octet-stream" {
				t.Errorf("detectContentType(%q, %q) = %q, want application/octet-stream", name, head, got)
			}
		}
	})
}
