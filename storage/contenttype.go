package storage

import (
	"bytes"
	"path"
	"strings"
	"unicode/utf8"
)

// contentTypes is a fixed table rather than mime.TypeByExtension, whose answers depend on the
// host's /etc/mime.types: the same file must get the same type (and ETag-able metadata) on every
// instance. Text types get "; charset=utf-8" only when the content looks like UTF-8.
var contentTypes = map[string]string{
	".png":  "image/png",
	".jpg":  "image/jpeg",
	".jpeg": "image/jpeg",
	".gif":  "image/gif",
	".webp": "image/webp",
	".bmp":  "image/bmp",
	".tif":  "image/tiff",
	".tiff": "image/tiff",
	".ico":  "image/vnd.microsoft.icon",
	".svg":  "image/svg+xml",
	".pdf":  "application/pdf",
	".eps":  "application/postscript",
	".ps":   "application/postscript",
	".json": "application/json",
	".xml":  "application/xml",
	".zip":  "application/zip",
	".gz":   "application/gzip",
	".tar":  "application/x-tar",
	".wav":  "audio/wav",
	".mp3":  "audio/mpeg",
	".ogg":  "audio/ogg",
	".mp4":  "video/mp4",
	".webm": "video/webm",
	".html": "text/html",
	".htm":  "text/html",
	".csv":  "text/csv",
	".tsv":  "text/tab-separated-values",
	".txt":  "text/plain",
	".log":  "text/plain",
	".md":   "text/markdown",
	".tex":  "text/x-tex",
	".py":   "text/x-python",
	".sage": "text/plain",
	".r":    "text/plain",
	".js":   "text/javascript",
	".css":  "text/css",
}

// detectContentType names the type of a file from its name and its first bytes.
func detectContentType(name string, head []byte) string {
	if t, ok := contentTypes[strings.ToLower(path.Ext(name))]; ok {
		if strings.HasPrefix(t, "text/") && looksLikeUTF8Text(head) {
			return t + "; charset=utf-8"
		}
		return t
	}
	for _, m := range magicNumbers {
		if bytes.HasPrefix(head, m.prefix) {
			return m.contentType
		}
	}
	if looksLikeUTF8Text(head) {
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

var magicNumbers = []struct {
	prefix      []byte
	contentType string
}{
	{[]byte("\x89PNG\r\n\x1a\n"), "image/png"},
	{[]byte("\xff\xd8\xff"), "image/jpeg"},
	{[]byte("GIF87a"), "image/gif"},
	{[]byte("GIF89a"), "image/gif"},
	{[]byte("%PDF-"), "application/pdf"},
	{[]byte("PK\x03\x04"), "application/zip"},
	{[]byte("\x1f\x8b"), "application/gzip"},
}

// looksLikeUTF8Text accepts a prefix of UTF-8 text without NUL bytes; a rune cut by the end of
// the prefix is allowed.
func looksLikeUTF8Text(head []byte) bool {
	if bytes.IndexByte(head, 0) >= 0 {
		return false
	}
	for i := 0; i < len(head); {
		r, size := utf8.DecodeRune(head[i:])
		if r == utf8.RuneError && size <= 1 {
			return len(head)-i < utf8.UTFMax && !utf8.FullRune(head[i:])
		}
		i += size
	}
	return true
}
