package gateway

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// /readyz stays 200 while the pool is fully leased but refilling, and is
// 503 when nothing is ready and nothing can start.
func TestReadyMeansCanServe(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	env.waitWarm()
	env.newKernel(url.Values{"timeout": {"60"}})
	var body map[string]any
	if r := env.do(http.MethodGet, "/readyz", "", "", &body); r.StatusCode != http.StatusOK {
		t.Errorf("pool leased out and refilling: %d %v", r.StatusCode, body)
	}

	// The sandbox's word on how kernels start comes along.
	const starts = "cold: the latest fork failed: a test"
	full := newTestEnv(t, 1, 1, func(c *Config) { c.KernelStarts = func() string { return starts } })
	full.waitWarm()
	full.newKernel(url.Values{"timeout": {"60"}})
	if r := full.do(http.MethodGet, "/readyz", "", "", &body); r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("pool at its cap with nothing ready: %d %v", r.StatusCode, body)
	}
	if body["kernel_starts"] != starts {
		t.Errorf("/readyz kernel_starts = %v, want %q", body["kernel_starts"], starts)
	}
}

// The HTTP body limit answers 413 JSON.
func TestBodyLimit(t *testing.T) {
	env := newTestEnv(t, 0, 2, func(c *Config) { c.MaxMessageBytes = 1 << 10 })
	var e apiError
	r := env.do(http.MethodPost, "/permalink", "application/json", `{"code":"`+strings.Repeat("x", 4<<10)+`"}`, &e)
	if r.StatusCode != http.StatusRequestEntityTooLarge || e.Error == "" {
		t.Errorf("oversized body: %d %+v", r.StatusCode, e)
	}
}
