package kernelpool

import (
	"fmt"

	zmq "github.com/pebbe/zmq4"
)

// DefaultMaxSockets is the socket limit of NewZMQContext. libzmq's own
// default, 1023, would stop a gateway at about a hundred kernels; the
// limit costs a pointer per socket, and the process's open-file limit still
// applies (a socket holds one descriptor, a connected one more).
const DefaultMaxSockets = 65536

// NewZMQContext returns a zmq context set up as kernels need: EINTR retried
// (Go's preemption signals interrupt libzmq calls) and room for
// maxSockets sockets (0: DefaultMaxSockets). Pool makes its own; code that
// calls StartKernel directly should make its context here.
func NewZMQContext(maxSockets int) (*zmq.Context, error) {
	if maxSockets <= 0 {
		maxSockets = DefaultMaxSockets
	}
	zctx, err := zmq.NewContext()
	if err != nil {
		return nil, fmt.Errorf("zmq context: %w", err)
	}
	zctx.SetRetryAfterEINTR(true)
	// Only takes effect before the context's first socket.
	if err := zctx.SetMaxSockets(maxSockets); err != nil {
		_ = zctx.Term()
		return nil, fmt.Errorf("zmq max sockets %d: %w", maxSockets, err)
	}
	return zctx, nil
}
