package gateway

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"

	"github.com/cellgate/cellgate/gateway/session"
	"github.com/cellgate/cellgate/kernelpool"
)

// The transports' tests flood a kernel's output to a client that does not
// read, on each transport, and check that what the process keeps of it is
// what the kernel message budget allows: the live Go heap (after a
// collection) grows by at most the budget and transportHeapSlack.
const (
	transportBudgetBytes = 16 << 20
	// transportHeapSlack is what the process may keep beyond the budget
	// during a flood: buffers and bookkeeping, not messages.
	transportHeapSlack = 8 << 20
	floodMessages      = 12
	floodMessageBytes  = 1500000
)

// liveHeap is the Go heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// dialSlow connects with a small receive buffer, so that a client that
// does not read stops its server's writes soon.
func dialSlow(addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{Timeout: 30 * time.Second}).Dial("tcp", addr)
	if err == nil {
		_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	}
	return conn, err
}

// transportFlood runs the tests' flood: a reading client floods the kernel
// once, a client that does not read is attached (attachSlow: it resumes from
// the start of the session's output, so its transport is handed the whole
// first flood), the reading client floods again and then prints, and it
// must see each flood end and its print. It returns the live heap's growth
// at the end, with the slow client still attached.
func transportFlood(t *testing.T, attachSlow func(env *testEnv, kernelID string) (detach func())) {
	budget := kernelpool.NewMessageBudget(transportBudgetBytes)
	env := newTestEnvWith(t, 2, 3, nil, func(k *kernelpool.KernelConfig) {
		k.MaxMessageBytes, k.MessageBudget = 2<<20, budget
	})
	env.waitWarm()
	base := liveHeap()

	k := env.newKernel(url.Values{"timeout": {"300"}})
	reader := env.dialSage(k.ID, "")
	reader.until(idleAfter(reader.execute(floodCode(floodMessages, floodMessageBytes))))
	detach := attachSlow(env, k.ID)
	defer func() {
		if detach != nil {
			detach()
		}
	}()
	reader.until(idleAfter(reader.execute(floodCode(floodMessages, floodMessageBytes))))
	if text := streamText(reader.until(idleAfter(reader.execute("print('still here')")))); !strings.Contains(text, "still here") {
		t.Fatalf("the kernel's reading client, with a slow one attached: %q", text)
	}

	grown := int64(liveHeap()) - int64(base)
	st := budget.Stats()
	t.Logf("live heap grown by %.1f MiB with the slow client attached; budget %+v", float64(grown)/(1<<20), st)
	if grown > transportBudgetBytes+transportHeapSlack {
		t.Errorf("the process keeps %.1f MiB more heap than before the floods: over the %d MiB budget and %d MiB slack",
			float64(grown)/(1<<20), transportBudgetBytes>>20, transportHeapSlack>>20)
	}
	if st.Peak > transportBudgetBytes || st.DoubleReleases != 0 {
		t.Errorf("peak %d bytes charged (budget %d); %d charges released twice", st.Peak, transportBudgetBytes, st.DoubleReleases)
	}

	detach()
	detach = nil
	if resp := env.do(http.MethodDelete, "/kernel/"+k.ID, "", "", nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	env.waitEnded(k.ID)
	waitFor(t, "every charge given back once the clients are gone", func() bool { return budget.Stats().InUse == 0 })
	if st := budget.Stats(); st.DoubleReleases != 0 {
		t.Fatalf("%d charges released twice", st.DoubleReleases)
	}
}

// A websocket client that does not read holds, in its writer, only what
// the budget allows.
func TestTransportBudgetSlowWebsocket(t *testing.T) {
	transportFlood(t, func(env *testEnv, id string) func() {
		dialer := websocket.Dialer{NetDial: func(_, addr string) (net.Conn, error) { return dialSlow(addr) }}
		var conns []*websocket.Conn
		for range 2 {
			conn, _, err := dialer.Dial(env.wsURL("/kernel/"+id+"/channels?session_id="+uuid.NewString()), nil)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
		}
		return func() {
			for _, c := range conns {
				c.Close()
			}
		}
	})
}

// A long-poll client that asks for the output and does not read the answer
// holds only what the budget allows, the answer being written one message
// at a time.
func TestTransportBudgetStalledPoll(t *testing.T) {
	transportFlood(t, func(env *testEnv, id string) func() {
		conn, err := dialSlow(env.http.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET /kernel/%s/poll?client=%s&since=0&wait=1 HTTP/1.1\r\nHost: cellgate\r\n\r\n", id, uuid.NewString())
		return func() { conn.Close() }
	})
}

// A SockJS page that does not read (websocket, xhr-streaming) or stops
// polling (xhr-polling) holds only what the budget allows, in the
// library's buffer as in the gateway.
func TestTransportBudgetSlowSockJS(t *testing.T) {
	open := func(id, session string) string {
		data, _ := json.Marshal(map[string]any{
			"channel": "shell", "header": map[string]string{"msg_type": "kernel_info_request", "msg_id": uuid.NewString(), "session": session},
			"parent_header": map[string]any{}, "metadata": map[string]any{}, "content": map[string]any{},
		})
		array, _ := json.Marshal([]string{id + "/channels," + string(data)})
		return string(array)
	}
	t.Run("websocket", func(t *testing.T) {
		transportFlood(t, func(env *testEnv, id string) func() {
			dialer := websocket.Dialer{NetDial: func(_, addr string) (net.Conn, error) { return dialSlow(addr) }}
			conn, _, err := dialer.Dial(env.wsURL("/sockjs/000/"+strings.ReplaceAll(uuid.NewString(), "-", "")+"/websocket"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := conn.WriteMessage(websocket.TextMessage, []byte(open(id, uuid.NewString()))); err != nil {
				t.Fatal(err)
			}
			waitSockJSStream(t, env, id)
			return func() { conn.Close() }
		})
	})
	t.Run("xhr-streaming", func(t *testing.T) {
		transportFlood(t, func(env *testEnv, id string) func() {
			base := "/sockjs/000/" + strings.ReplaceAll(uuid.NewString(), "-", "")
			conn, err := dialSlow(env.http.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			// The page's stream, which it does not read.
			fmt.Fprintf(conn, "POST %s/xhr_streaming HTTP/1.1\r\nHost: cellgate\r\nContent-Length: 0\r\n\r\n", base)
			waitFor(t, "the SockJS session to open", func() bool {
				resp, err := http.Post(env.url(base+"/xhr_send"), "text/plain", strings.NewReader(open(id, uuid.NewString())))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusNoContent
			})
			waitSockJSStream(t, env, id)
			return func() { conn.Close() }
		})
	})
	t.Run("xhr-polling", func(t *testing.T) {
		transportFlood(t, func(env *testEnv, id string) func() {
			base := env.url("/sockjs/000/" + strings.ReplaceAll(uuid.NewString(), "-", ""))
			resp, err := http.Post(base+"/xhr", "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			resp, err = http.Post(base+"/xhr_send", "text/plain", strings.NewReader(open(id, uuid.NewString())))
			if err != nil || resp.StatusCode != http.StatusNoContent {
				t.Fatalf("xhr_send: %v %v", err, resp)
			}
			resp.Body.Close()
			waitSockJSStream(t, env, id)
			// The page polls no more: the library keeps what comes.
			return func() {}
		})
	})
}

// waitSockJSStream waits until a SockJS connection follows kernel id (the
// stream starts on the page's first message for it, after that message's
// request is answered), so that its writer starts from the first flood.
func waitSockJSStream(t *testing.T, env *testEnv, id string) {
	waitFor(t, "the SockJS stream to start", func() bool {
		return slices.Contains(env.gw.sessions.get(id).Transports(), session.TransportSockJS)
	})
}

// A message whose frame the budget has no room to hold for a client (here
// one of 3 MiB, held by the replay, in a budget of 5 MiB) is not sent to
// it; the client is told, and the rest of the execution reaches it.
func TestTransportSkipsWhatTheBudgetCannotHold(t *testing.T) {
	budget := kernelpool.NewMessageBudget(5 << 20)
	env := newTestEnvWith(t, 1, 2, nil, func(k *kernelpool.KernelConfig) {
		k.MaxMessageBytes, k.MessageBudget = 4<<20, budget
	})
	k := env.newKernel(url.Values{"timeout": {"300"}})
	c := env.dialSage(k.ID, "")
	frames := c.until(idleAfter(c.execute(floodCode(1, 3<<20) + "\nprint('after it')")))
	text := streamText(frames)
	if !strings.Contains(text, "1 messages of output were not sent to this client: the server holds as much kernel output as it may (kernel message budget)") ||
		!strings.Contains(text, "after it") {
		t.Errorf("a message the budget cannot hold for the client: it saw %q", text)
	}
	if _, ok := find(frames, "display_data"); ok {
		t.Error("the message was sent all the same")
	}
	if st := budget.Stats(); st.Skipped == 0 || st.Peak > 5<<20 {
		t.Errorf("%+v: want a skip, and never more than the budget charged", st)
	}
}
