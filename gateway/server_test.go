package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"syscall"
	"testing"

	"github.com/cellgate/cellgate/gateway/session"
)

func TestDrainEndsSessionsClearly(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	k := env.newKernel(url.Values{"timeout": {"60"}})
	c := env.dialSage(k.ID, "")
	pid := env.gw.sessions.get(k.ID).Kernel().Pid()
	done := make(chan error)
	go func() { done <- env.gw.Drain(t.Context()) }()
	frames := c.until(func(f frame) bool { return f.str("execution_state") == "dead" })
	if frames[len(frames)-1].str("reason") != session.EndShutdown {
		t.Errorf("drain reason %+v", frames[len(frames)-1])
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Error("kernel process still alive after drain")
	}
	var e apiError
	if resp := env.postForm("/kernel", url.Values{}, &e); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("new session while draining: %d", resp.StatusCode)
	}
}

// Drain gives up at its context's deadline.
func TestDrainHonoursItsContext(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.newKernel(url.Values{"timeout": {"60"}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := env.gw.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("drain with a cancelled context: %v", err)
	}
}
