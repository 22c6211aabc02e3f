package storage

import (
	"bytes"
	"path"
	"strings"
	"unicode/utf8"
)

// extensionContentType is a fixed table rather than mime.TypeByExtension, whose answers depend on
// the host's /etc/mime.types: the same file must get the same type (and ETag-able metadata) on
// every instance. ext is lower case, with its dot.
func extensionContentType(ext string) (string, bool) {
	switch ext {
	case ".png":
		return "image/png", true
	case ".jpg", ".jpeg":
		return "image/jpeg", true
	case ".gif":
		return "image/gif", true
	case ".webp":
		return "image/webp", true
	case ".bmp":
		return "image/bmp", true
	case ".tif", ".tiff":
		return "image/tiff", true
	case ".ico":
		return "image/vnd.microsoft.icon", true
	case ".svg":
		return "image/svg+xml", true
	case ".pdf":
		return "application/pdf", true
	case ".eps", ".ps":
		return "application/postscript", true
	case ".json":
		return "application/json", true
	case ".xml":
		return "application/xml", true
	case ".zip":
		return "application/zip", true
	case ".gz":
		return "application/gzip", true
	case ".tar":
		return "application/x-tar", true
	case ".wav":
		return "audio/wav", true
	case ".mp3":
		return "audio/mpeg", true
	case ".ogg":
		return "audio/ogg", true
	case ".mp4":
		return "video/mp4", true
	case ".webm":
		return "video/webm", true
	case ".html", ".htm":
		return "text/html", true
	case ".csv":
		return "text/csv", true
	case ".tsv":
		return "text/tab-separated-values", true
	case ".txt", ".log", ".sage", ".r":
		return "text/plain", true
	case ".md":
		return "text/markdown", true
	case ".tex":
		return "text/x-tex", true
	case ".py":
		return "text/x-python", true
	case ".js":
		return "text/javascript", true
	case ".css":
		return "text/css", true
	}
	return "", false
}

// magicContentType recognises the formats kernels commonly write without a telling extension.
func magicContentType(head []byte) (string, bool) {
	has := func(prefix string) bool { return bytes.HasPrefix(head, []byte(prefix)) }
	switch {
	case has("\x89PNG\r\n\x1a\n"):
		return "image/png", true
	case has("\xff\xd8\xff"):
		return "image/jpeg", true
	case has("GIF87a"), has("GIF89a"):
		return "image/gif", true
	case has("%PDF-"):
		return "application/pdf", true
	case has("PK\x03\x04"):
		return "application/zip", true
	case has("\x1f\x8b"):
		return "application/gzip", true
	}
	return "", false
}

// detectContentType names the type of a file from its name and its first bytes. Text types get
// "; charset=utf-8" only when the content looks like UTF-8.
func detectContentType(name string, head []byte) string {
	if t, ok := extensionContentType(strings.ToLower(path.Ext(name))); ok {
		if strings.HasPrefix(t, "text/") && looksLikeUTF8Text(head) {
			return t + "; charset=utf-8"
		}
		return t
	}
	if t, ok := magicContentType(head); ok {
		return t
	}
	if looksLikeUTF8Text(head) {
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
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
