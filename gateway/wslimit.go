package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// errMessageTooLarge ends a websocket whose client sends a message over
// the cap.
var errMessageTooLarge = errors.New("websocket message over the size limit")

// frameLimiter follows the websocket frames a client sends and fails the
// read that would take one message (its frames up to FIN) over limit. It
// is for websockets a library upgrades without a read limit of its own
// (SockJS's): the connection ends before the message is buffered.
type frameLimiter struct {
	limit int64

	state    int   // what the next byte is
	need     int   // bytes left of the extended length or of the mask
	length   int64 // the frame's payload length
	left     int64 // payload bytes left to skip
	fin      bool
	control  bool
	masked   bool
	message  int64 // bytes of the current data message so far
	overflow bool
}

const (
	frameHeader0 = iota
	frameHeader1
	frameExtLength
	frameMask
	framePayload
)

// feed takes bytes as read; it reports errMessageTooLarge once a message
// has gone over the limit (and for every read after).
func (f *frameLimiter) feed(b []byte) error {
	for len(b) > 0 && !f.overflow {
		switch f.state {
		case frameHeader0:
			f.fin = b[0]&0x80 != 0
			f.control = b[0]&0x08 != 0
			f.state = frameHeader1
			b = b[1:]
		case frameHeader1:
			f.masked = b[0]&0x80 != 0
			f.length = int64(b[0] & 0x7f)
			b = b[1:]
			switch f.length {
			case 126:
				f.state, f.need, f.length = frameExtLength, 2, 0
			case 127:
				f.state, f.need, f.length = frameExtLength, 8, 0
			default:
				f.afterLength()
			}
		case frameExtLength:
			f.length = f.length<<8 | int64(b[0])
			b = b[1:]
			if f.length < 0 || f.length > f.limit {
				// Over the limit on its own (or not a length at all).
				f.overflow = true
				break
			}
			if f.need--; f.need == 0 {
				f.afterLength()
			}
		case frameMask:
			n := min(len(b), f.need)
			f.need -= n
			b = b[n:]
			if f.need == 0 {
				f.startPayload()
			}
		case framePayload:
			n := int64(len(b))
			if n > f.left {
				n = f.left
			}
			f.left -= n
			b = b[n:]
			if f.left == 0 {
				f.endFrame()
			}
		}
	}
	if f.overflow {
		return errMessageTooLarge
	}
	return nil
}

func (f *frameLimiter) afterLength() {
	if f.masked {
		f.state, f.need = frameMask, 4
		return
	}
	f.startPayload()
}

func (f *frameLimiter) startPayload() {
	if !f.control {
		f.message += f.length
		if f.message > f.limit {
			f.overflow = true
			return
		}
	}
	f.left = f.length
	f.state = framePayload
	if f.left == 0 {
		f.endFrame()
	}
}

func (f *frameLimiter) endFrame() {
	if f.fin && !f.control {
		f.message = 0
	}
	f.state = frameHeader0
}

// limitedConn is a hijacked connection whose reads go through a
// frameLimiter.
type limitedConn struct {
	net.Conn
	frames *frameLimiter
}

func (c *limitedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if ferr := c.frames.feed(p[:n]); ferr != nil {
		return 0, fmt.Errorf("%w (%d bytes)", ferr, c.frames.limit)
	}
	return n, err
}

// limitingWriter hands out limitedConns on Hijack.
type limitingWriter struct {
	http.ResponseWriter
	limit int64
}

func (w limitingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be taken over")
	}
	conn, rw, err := h.Hijack()
	if err != nil {
		return nil, nil, err
	}
	if rw.Reader.Buffered() > 0 {
		// Bytes past the request already read: gorilla refuses these too.
		return conn, rw, nil
	}
	limited := &limitedConn{Conn: conn, frames: &frameLimiter{limit: w.limit}}
	return limited, bufio.NewReadWriter(bufio.NewReader(limited), rw.Writer), nil
}

// Unwrap lets http.ResponseController reach the original writer.
func (w limitingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
