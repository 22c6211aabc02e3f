package kernelpool

import (
	"context"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

// TestContextHoldsManySockets: libzmq's default of 1023 sockets would stop
// a gateway at about a hundred kernels.
func TestContextHoldsManySockets(t *testing.T) {
	zctx := testContext(t)
	var socks []*zmq.Socket
	defer func() {
		for _, s := range socks {
			s.Close()
		}
	}()
	for i := range 1100 {
		s, err := zctx.NewSocket(zmq.PAIR)
		if err != nil {
			t.Fatalf("socket %d: %v", i, err)
		}
		socks = append(socks, s)
	}
	cfg := testKernelConfig(t)
	p, err := New(Config{Specs: installedSpecs(t), Ready: map[string]int{}, MaxSockets: 2000, Kernel: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	if n, err := p.zctx.GetMaxSockets(); err != nil || n != 2000 {
		t.Errorf("pool context max sockets = %d, %v; want the configured 2000", n, err)
	}
}
