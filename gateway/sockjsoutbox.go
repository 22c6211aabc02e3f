package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cellgate/cellgate/kernelpool"
)

// sockjsOutbox is what a SockJS connection has handed to its library
// (sockjs-go) and the library has not yet written to the page. On the
// websocket transport the library writes within Send; on the http ones
// (xhr-polling, xhr-streaming, eventsource, …) it keeps, without bound,
// what comes while no request of the page is there to take it, and writes
// all it keeps as one frame to the page's next request. The outbox keeps
// each message's charge until a frame carrying it is written
// (sockjsFrameWriter counts them), and the connection's writers wait while
// it holds clientQueueBytes: a page that stops polling makes the library
// hold at most that (and one message), until the session times out.
type sockjsOutbox struct {
	mu      sync.Mutex
	pending []outboxItem // in the order handed to the library
	bytes   int64
	// room is closed (and replaced) whenever bytes fall or the outbox closes.
	room   chan struct{}
	closed bool
}

type outboxItem struct {
	bytes  int64
	charge *kernelpool.Charge
}

func newSockJSOutbox() *sockjsOutbox { return &sockjsOutbox{room: make(chan struct{})} }

// push adds a message about to be handed to the library; false (its
// charge let go) if the connection is over.
func (o *sockjsOutbox) push(n int64, c *kernelpool.Charge) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		c.Release()
		return false
	}
	o.pending = append(o.pending, outboxItem{n, c})
	o.bytes += n
	return true
}

// written lets the n oldest messages go: a frame carrying them was written.
func (o *sockjsOutbox) written(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.releaseLocked(min(n, len(o.pending)))
}

// writtenAll lets every message go.
func (o *sockjsOutbox) writtenAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.releaseLocked(len(o.pending))
}

// close lets everything go for good: the connection is over.
func (o *sockjsOutbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.releaseLocked(len(o.pending))
}

func (o *sockjsOutbox) releaseLocked(n int) {
	if n == 0 && !o.closed {
		return
	}
	for i := range n {
		o.bytes -= o.pending[i].bytes
		o.pending[i].charge.Release()
	}
	o.pending = append(o.pending[:0:0], o.pending[n:]...)
	close(o.room)
	o.room = make(chan struct{})
}

// held is what the outbox holds: messages and their bytes.
func (o *sockjsOutbox) held() (msgs int, bytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending), o.bytes
}

// waitRoom waits until the outbox holds less than clientQueueBytes; false
// if ctx ends or the outbox closes first.
func (o *sockjsOutbox) waitRoom(ctx context.Context) bool {
	for {
		o.mu.Lock()
		closed, full, room := o.closed, o.bytes >= clientQueueBytes, o.room
		o.mu.Unlock()
		switch {
		case closed:
			return false
		case !full:
			return true
		}
		select {
		case <-room:
		case <-ctx.Done():
			return false
		}
	}
}

// sockjsOutboxes finds a SockJS connection's outbox by its session id, for
// the page's requests that receive its frames.
type sockjsOutboxes struct {
	mu   sync.Mutex
	byID map[string]*sockjsOutbox
}

func (r *sockjsOutboxes) add(id string, o *sockjsOutbox) (forget func()) {
	r.mu.Lock()
	r.byID[id] = o
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		if r.byID[id] == o {
			delete(r.byID, id)
		}
		r.mu.Unlock()
	}
}

func (r *sockjsOutboxes) get(id string) *sockjsOutbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

// sockjsReceivingTransports are the SockJS http transports the library
// writes a session's frames to.
var sockjsReceivingTransports = map[string]bool{"xhr": true, "xhr_streaming": true, "eventsource": true, "htmlfile": true, "jsonp": true}

// sockjsReceiving reports whether r is a request the library writes
// frames of a session to, and that session's id:
// /sockjs/<server>/<session>/<transport>.
func sockjsReceiving(r *http.Request) (string, bool) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, sockjsPrefix+"/"), "/")
	if len(parts) != 3 || !sockjsReceivingTransports[parts[2]] {
		return "", false
	}
	return parts[1], true
}

// sockjsFrameWriter is the response of a request the library writes a
// session's frames to. Each frame the library writes is one Write; one
// carrying messages ("a[…]") lets that many of the outbox's oldest go once
// it is flushed. Each write gets writeTimeout, so that a page that stops
// reading a stream ends it rather than holding the library's lock (and its
// buffer) for ever.
type sockjsFrameWriter struct {
	http.ResponseWriter
	outboxes *sockjsOutboxes
	session  string
}

func (w *sockjsFrameWriter) Write(p []byte) (int, error) {
	rc := http.NewResponseController(w.ResponseWriter)
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	n, err := w.ResponseWriter.Write(p)
	if err == nil {
		err = rc.Flush()
	}
	// The server sets no write deadline of its own: one left behind would
	// cut the connection's next request.
	_ = rc.SetWriteDeadline(time.Time{})
	if err == nil {
		if msgs := sockjsFrameMessages(p); msgs > 0 {
			if o := w.outboxes.get(w.session); o != nil {
				o.written(msgs)
			}
		}
	}
	return n, err
}

// Flush is the library's: it flushes after each frame of a stream.
func (w *sockjsFrameWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the original writer.
func (w *sockjsFrameWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sockjsFrameMessages counts the messages of a SockJS frame as one of the
// library's frame writers wrote it: "a[…]\n" (xhr), "data: a[…]\r\n\r\n"
// (eventsource), or the frame quoted again as a JavaScript call's
// argument (htmlfile, jsonp). 0 for other frames (open, heartbeat,
// close) and anything else.
func sockjsFrameMessages(p []byte) int {
	var frame []byte
	switch {
	case bytes.HasPrefix(p, []byte("a[")):
		frame = p
	case bytes.HasPrefix(p, []byte("data: a[")):
		frame = p[len("data: "):]
	default:
		start := bytes.Index(p, []byte(`("a[`))
		end := bytes.LastIndex(p, []byte(`");`))
		if start < 0 || end < start {
			return 0
		}
		var s string
		if json.Unmarshal(p[start+1:end+1], &s) != nil {
			return 0
		}
		frame = []byte(s)
	}
	return countJSONStrings(frame[len("a["):])
}

// countJSONStrings counts the strings of a JSON array of strings, from
// after its "[" to its "]".
func countJSONStrings(p []byte) int {
	n := 0
	for {
		i := bytes.IndexAny(p, `"]`)
		if i < 0 || p[i] == ']' {
			return n
		}
		n++
		p = p[i+1:]
		// The string's end: a quote not escaped.
		for {
			j := bytes.IndexAny(p, `"\`)
			if j < 0 {
				return n
			}
			if p[j] == '\\' {
				p = p[min(j+2, len(p)):]
				continue
			}
			p = p[j+1:]
			break
		}
	}
}
