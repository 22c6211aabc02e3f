package localcluster

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// TestRelay: bytes pass both ways; Cut closes the connections relayed and every new one at
// once; Restore relays new connections again.
func TestRelay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	r, err := StartRelay(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	echo := func(c net.Conn) (string, error) {
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return "", err
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	before := dial()
	if got, err := echo(before); got != "ping\n" || err != nil {
		t.Fatalf("through the relay: %q %v", got, err)
	}
	r.Cut()
	if got, err := echo(before); err == nil {
		t.Errorf("a relayed connection still echoes %q after Cut", got)
	}
	if got, err := echo(dial()); err == nil {
		t.Errorf("a new connection echoes %q while cut", got)
	}
	r.Restore()
	if got, err := echo(dial()); got != "ping\n" || err != nil {
		t.Errorf("after Restore: %q %v", got, err)
	}
}
