package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/kernelpool"
)

// The frames the SockJS library writes, as each of its http transports
// writes them, carry the messages counted; the others carry none.
func TestSockJSFrameMessages(t *testing.T) {
	msgs := []string{`k/channels,{"a":"x\"]y"}`, `complete,[\]`, `]`}
	var quoted []string
	for _, m := range msgs {
		q, _ := json.Marshal(m)
		quoted = append(quoted, string(q))
	}
	frame := "a[" + strings.Join(quoted, ",") + "]"
	again, _ := json.Marshal(frame)
	for name, tc := range map[string]struct {
		written string
		want    int
	}{
		"xhr":         {frame + "\n", 3},
		"eventsource": {"data: " + frame + "\r\n\r\n", 3},
		"htmlfile":    {"<script>\np(" + string(again) + ");\n</script>\r\n", 3},
		"jsonp":       {"cb(" + string(again) + ");\r\n", 3},
		"one":         {`a["x"]` + "\n", 1},
		"open":        {"o\n", 0},
		"heartbeat":   {"h\n", 0},
		"close":       {`c[3000,"Go away!"]` + "\n", 0},
		"prelude":     {strings.Repeat("h", 2048) + "\n", 0},
	} {
		if got := sockjsFrameMessages([]byte(tc.written)); got != tc.want {
			t.Errorf("%s: %d messages in %q, want %d", name, got, tc.written, tc.want)
		}
	}
}

// The outbox holds at most clientQueueBytes (and the message that went
// over) before its writers wait; a written frame lets its messages go, and
// closing lets the rest go, each charge once.
func TestSockJSOutboxBoundsWhatTheLibraryHolds(t *testing.T) {
	budget := kernelpool.NewMessageBudget(0)
	o := newSockJSOutbox()
	const size = 512 << 10
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for pushed := 0; o.waitRoom(done); pushed++ {
		c, _ := budget.Hold(size)
		if !o.push(size, c) {
			t.Fatal("push refused before close")
		}
		if pushed > clientQueueBytes/size {
			t.Fatalf("%d messages of %d bytes held without waiting (bound %d)", pushed+1, size, clientQueueBytes)
		}
	}
	// Full: a writer waits until a frame is written.
	if o.waitRoom(done) {
		t.Fatal("room in a full outbox")
	}
	if msgs, bytes := o.held(); msgs != clientQueueBytes/size || bytes != clientQueueBytes {
		t.Fatalf("held %d messages, %d bytes; want %d, %d", msgs, bytes, clientQueueBytes/size, clientQueueBytes)
	}
	o.written(1)
	if !o.waitRoom(context.Background()) {
		t.Fatal("no room after a frame was written")
	}
	if got, want := budget.Stats().InUse, int64(clientQueueBytes-size); got != want {
		t.Fatalf("charged %d after one written, want %d", got, want)
	}
	o.written(1 << 20) // more than it holds: all of it
	c, _ := budget.Hold(size)
	o.push(size, c)
	o.close()
	if o.push(1, nil) || o.waitRoom(context.Background()) {
		t.Fatal("a closed outbox takes messages")
	}
	if st := budget.Stats(); st.InUse != 0 || st.DoubleReleases != 0 {
		t.Fatal(fmt.Sprintf("after close: %+v", st))
	}
}
