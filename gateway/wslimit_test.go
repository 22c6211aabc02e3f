package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// clientFrame is a masked client frame as a browser sends it.
func clientFrame(fin bool, opcode byte, payload []byte) []byte {
	var b bytes.Buffer
	first := opcode
	if fin {
		first |= 0x80
	}
	b.WriteByte(first)
	switch n := len(payload); {
	case n < 126:
		b.WriteByte(0x80 | byte(n))
	case n < 1<<16:
		b.WriteByte(0x80 | 126)
		_ = binary.Write(&b, binary.BigEndian, uint16(n))
	default:
		b.WriteByte(0x80 | 127)
		_ = binary.Write(&b, binary.BigEndian, uint64(n))
	}
	b.Write([]byte{1, 2, 3, 4})
	b.Write(payload) // the mask does not change lengths
	return b.Bytes()
}

func TestFrameLimiter(t *testing.T) {
	small := bytes.Repeat([]byte("x"), 100)
	big := bytes.Repeat([]byte("x"), 70000)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		over   bool
	}{
		{"small messages", [][]byte{clientFrame(true, 1, small), clientFrame(true, 2, small)}, false},
		{"one message at the limit", [][]byte{clientFrame(true, 1, big[:1000])}, false},
		{"one message over it (16-bit length)", [][]byte{clientFrame(true, 1, big[:1001])}, true},
		{"64-bit length", [][]byte{clientFrame(true, 1, big)}, true},
		{"fragments adding up over it", [][]byte{clientFrame(false, 1, big[:600]), clientFrame(true, 0, big[:600])}, true},
		{"fragments with a ping between, within it", [][]byte{clientFrame(false, 1, small), clientFrame(true, 9, small[:10]), clientFrame(true, 0, small)}, false},
		{"many messages each within it", [][]byte{clientFrame(true, 1, big[:900]), clientFrame(true, 1, big[:900]), clientFrame(true, 1, big[:900])}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &frameLimiter{limit: 1000}
			stream := bytes.Join(tc.frames, nil)
			var err error
			// Byte by byte: reads split frames anywhere.
			for i := 0; i < len(stream) && err == nil; i++ {
				err = f.feed(stream[i : i+1])
			}
			if over := errors.Is(err, errMessageTooLarge); over != tc.over {
				t.Fatalf("over the limit: %v (%v), want %v", over, err, tc.over)
			}
			if !tc.over && f.state != frameHeader0 {
				t.Fatalf("ended in state %d, not between frames", f.state)
			}
		})
	}
}

// A websocket upgraded by code that sets no read limit still ends at the
// cap, through the hijacked connection.
func TestLimitingWriterCapsAWebsocket(t *testing.T) {
	got := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := (&websocket.Upgrader{}).Upgrade(limitingWriter{ResponseWriter: w, limit: 1000}, r, nil)
		if err != nil {
			got <- err
			return
		}
		defer conn.Close()
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				got <- err
				return
			}
		}
	}))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("a", 900))); err != nil {
		t.Fatal(err)
	}
	_ = c.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("b", 5000)))
	select {
	case err := <-got:
		if !errors.Is(err, errMessageTooLarge) {
			var netErr net.Error
			if !errors.As(err, &netErr) && !strings.Contains(err.Error(), "size limit") {
				t.Fatalf("the server's read ended with %v, not the size limit", err)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a message over the cap was read")
	}
}

// FuzzFrameLimiter: any bytes, split anywhere, neither panic nor let a
// message over the limit through unnoticed.
func FuzzFrameLimiter(f *testing.F) {
	f.Add(clientFrame(true, 1, []byte("hello")), 3)
	f.Add(clientFrame(false, 1, bytes.Repeat([]byte("x"), 200)), 7)
	f.Add([]byte{0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1)
	f.Fuzz(func(t *testing.T, stream []byte, split int) {
		whole := &frameLimiter{limit: 100}
		errWhole := whole.feed(stream)
		parts := &frameLimiter{limit: 100}
		var errParts error
		if split <= 0 {
			split = 1
		}
		for i := 0; i < len(stream) && errParts == nil; i += split {
			errParts = parts.feed(stream[i:min(i+split, len(stream))])
		}
		if (errWhole == nil) != (errParts == nil) {
			t.Fatalf("whole: %v, in parts of %d: %v", errWhole, split, errParts)
		}
		if errWhole == nil && whole.message > whole.limit {
			t.Fatalf("message of %d bytes passed a limit of %d", whole.message, whole.limit)
		}
	})
}
