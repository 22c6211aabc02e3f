package kernelpool

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/cellgate/cellgate/jupytermsg"
)

// TestSlowConsumerHoldsLittle: a kernel that publishes far more than its
// reader takes must not make the gateway hold it. Once the kernel has
// published everything it is stopped, so whatever can still be read was
// held by the gateway.
func TestSlowConsumerHoldsLittle(t *testing.T) {
	k := startKernel(t, installedSpecs(t)["python3"], func(c *KernelConfig) { c.HeartbeatInterval = time.Hour })
	const published = 400
	code := "from IPython.display import display\nimport sys\n" +
		"for i in range(" + strconv.Itoa(published) + "):\n    display({'text/plain': 'x' * 65536}, raw=True)\n" +
		// flush returns once the iopub thread has sent everything before it.
		"sys.stdout.flush()\nopen('flooded', 'w').close()\n"
	m, err := jupytermsg.New("execute_request", k.Session, nil, jupytermsg.ExecuteRequest{Code: code, UserExpressions: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Send(jupytermsg.Shell, m); err != nil {
		t.Fatal(err)
	}
	flooded := filepath.Join(k.WorkDir, "flooded")
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(flooded); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel never finished publishing: %s", k.Output())
		}
	}
	if err := syscall.Kill(-k.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	held := 0
	for quiet := time.NewTimer(time.Second); ; {
		select {
		case <-k.Messages():
			held++
			quiet.Reset(time.Second)
			continue
		case <-quiet.C:
		}
		break
	}
	// The default queues (16 in Messages, 8 per socket) and a few messages
	// in socket buffers and in hand; a literal, so that raising the queues
	// fails here.
	const bound = 64
	if held > bound {
		t.Errorf("the gateway held %d of %d messages a stopped kernel published; want at most %d", held, published, bound)
	}
}

// TestStdinMonitorFailureFailsFast: if the stdin handshake can no longer
// be seen, start-up must hear of it at once, not at StartTimeout.
func TestStdinMonitorFailureFailsFast(t *testing.T) {
	zctx := testContext(t)
	monitor, err := zctx.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	monitor.Close()
	s := &sockets{stop: make(chan struct{}), stdinReady: make(chan struct{}), stdinFailed: make(chan struct{})}
	s.wg.Add(1)
	go s.watchStdinHandshake(monitor)
	waitFor(t, s.stdinFailed, "the stdin watcher to report its failure")
	if s.stdinErr == nil {
		t.Error("stdinFailed closed without an error")
	}
	s.wg.Wait()
}
