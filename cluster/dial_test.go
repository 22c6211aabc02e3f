package cluster

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestDialWebsocket: a websocket dialed to another instance arrives authenticated (from this
// instance, for the client's address) at the request URI asked, with the client's Host, and
// carries messages both ways; one to this instance is a loop, one to an instance that answers
// without upgrading or that is gone is unreachable, and a second instance's secret is refused.
func TestDialWebsocket(t *testing.T) {
	upgrader := websocket.Upgrader{}
	_, to := owner(t, "b", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain" {
			echoSeen(w, r)
			return
		}
		f, ok := ForwardedFrom(r.Context())
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		_ = conn.WriteJSON(seen{URI: r.URL.RequestURI(), Host: r.Host, Forwarded: ok, From: f.From, Client: f.Client})
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil || conn.WriteMessage(kind, append([]byte("echo "), data...)) != nil {
				return
			}
		}
	}))
	fwd, err := NewForwarder(ForwarderConfig{Secret: testSecret, InstanceID: "a", Log: testLogger(t)})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	conn, err := fwd.DialWebsocket(ctx, to, "/kernel/k%2F1/channels?session_id=s", "cells.example", "192.0.2.9")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var s seen
	if err := conn.ReadJSON(&s); err != nil {
		t.Fatal(err)
	}
	if want := (seen{URI: "/kernel/k%2F1/channels?session_id=s", Host: "cells.example", Forwarded: true, From: "a", Client: "192.0.2.9"}); s != want {
		t.Errorf("owner saw %+v, want %+v", s, want)
	}
	if err := conn.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, data, err := conn.ReadMessage(); err != nil || string(data) != "echo hi" {
		t.Errorf("echo %q %v", data, err)
	}

	if _, err := fwd.DialWebsocket(ctx, Instance{ID: "a", URL: to.URL}, "/x", "h", ""); !errorsIs(err, ErrLoop) {
		t.Errorf("dial to itself: %v", err)
	}
	if _, err := fwd.DialWebsocket(ctx, to, "/plain", "h", ""); !errorsIs(err, ErrUnreachable) {
		t.Errorf("dial answered without an upgrade: %v", err)
	}
	if _, err := fwd.DialWebsocket(ctx, Instance{ID: "gone", URL: "http://127.0.0.1:1/"}, "/x", "h", ""); !errorsIs(err, ErrUnreachable) {
		t.Errorf("dial to a gone instance: %v", err)
	}
	other, err := NewForwarder(ForwarderConfig{Secret: []byte("another secret, of another cluster"), InstanceID: "a", Log: testLogger(t)})
	must(t, err)
	if _, err := other.DialWebsocket(ctx, to, "/kernel/k/channels", "h", ""); !errorsIs(err, ErrUnreachable) {
		t.Errorf("dial signed with another secret: %v", err)
	}
}
