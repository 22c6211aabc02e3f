package storage

import (
	"context"
	"log/slog"
	"strings"

	"github.com/rs/zerolog"
)

// slogToZerolog forwards FerretDB's slog records into our zerolog logger, so that the embedded
// database's messages land in the same stream and format as the rest of cellgate.
type slogToZerolog struct {
	log    zerolog.Logger
	min    slog.Level
	attrs  []slog.Attr
	groups []string
	// perConnection is set for FerretDB's per-connection loggers, which dump every error reply
	// (e.g. "ns does not exist" for listIndexes on a new collection, or the unsupported
	// endSessions the driver sends on disconnect) as multi-line warnings.
	perConnection bool
}

func newSlogToZerolog(log zerolog.Logger, min slog.Level) *slog.Logger {
	return slog.New(&slogToZerolog{log: log, min: min})
}

func (h *slogToZerolog) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.min
}

func (h *slogToZerolog) Handle(_ context.Context, r slog.Record) error {
	level := zerologLevel(r.Level)
	// Below error, per-connection chatter and "Connection stopped" (logged as a warning whenever a
	// client or our own shutdown cuts a connection) are routine: keep them out of warn.
	if level < zerolog.ErrorLevel && (h.perConnection || r.Message == "Connection stopped") {
		if h.min > slog.LevelDebug {
			return nil
		}
		level = zerolog.DebugLevel
	}
	ev := h.log.WithLevel(level)
	if ev == nil { // disabled by the zerolog logger's own level
		return nil
	}
	prefix := ""
	for _, g := range h.groups {
		prefix += g + "."
	}
	for _, a := range h.attrs {
		addSlogAttr(ev, "", a) // attrs were qualified when they were added
	}
	r.Attrs(func(a slog.Attr) bool {
		addSlogAttr(ev, prefix, a)
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func (h *slogToZerolog) WithAttrs(attrs []slog.Attr) slog.Handler {
	prefix := ""
	for _, g := range h.groups {
		prefix += g + "."
	}
	n := *h
	n.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range attrs {
		n.attrs = append(n.attrs, slog.Attr{Key: prefix + a.Key, Value: a.Value})
		if a.Key == "name" && strings.HasPrefix(a.Value.String(), "// ") {
			n.perConnection = true
		}
	}
	return &n
}

func (h *slogToZerolog) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.groups = append(append([]string(nil), h.groups...), name)
	return &n
}

func addSlogAttr(ev *zerolog.Event, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, ga := range v.Group() {
			addSlogAttr(ev, prefix+a.Key+".", ga)
		}
		return
	}
	if a.Key == "" {
		return
	}
	key := prefix + a.Key
	switch v.Kind() {
	case slog.KindString:
		ev.Str(key, v.String())
	case slog.KindInt64:
		ev.Int64(key, v.Int64())
	case slog.KindUint64:
		ev.Uint64(key, v.Uint64())
	case slog.KindFloat64:
		ev.Float64(key, v.Float64())
	case slog.KindBool:
		ev.Bool(key, v.Bool())
	case slog.KindDuration:
		ev.Dur(key, v.Duration())
	case slog.KindTime:
		ev.Time(key, v.Time())
	default:
		if err, ok := v.Any().(error); ok {
			ev.AnErr(key, err)
			return
		}
		ev.Str(key, v.String())
	}
}

func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	default:
		return zerolog.DebugLevel
	}
}
