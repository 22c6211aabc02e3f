package kernelpool

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestExecuteWithoutIdleEndsWithContext: the idle that ends an execution
// can be dropped (iopub is a PUB socket); Execute must then end with its
// context and say what it missed, handing back the reply it did get.
func TestExecuteWithoutIdleEndsWithContext(t *testing.T) {
	k := startKernel(t, misbehavingSpec(t, "no-idle"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reply, err := Execute(ctx, k, "1+1", nil)
	if !errors.Is(err, ErrNoIdle) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want ErrNoIdle and the context's error", err)
	}
	if reply == nil || reply.Header.MsgType != "execute_reply" {
		t.Errorf("reply = %v, want the execute_reply that did arrive", reply)
	}
}
