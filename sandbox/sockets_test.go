package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketsResult is what sockets.py reports.
type socketsResult struct {
	Reach           []int
	SocketpairReach []int `json:"socketpair reach"`
	NetlinkReach    []int `json:"netlink reach"`
	Open            map[string]string
	Echo            map[string]string
	Interfaces      any
	GetAddrInfo     any `json:"getaddrinfo"`
}

// checkSockets asserts that only the families of socketFamilies (and
// netlink's NETLINK_ROUTE) get past the filter, that every other one fails
// with EAFNOSUPPORT, and that what a kernel needs still works.
func checkSockets(t *testing.T, how string, r socketsResult) {
	t.Helper()
	if seccompFilter() == nil {
		t.Skip("no seccomp filter on this architecture")
	}
	want := []int{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6, unix.AF_NETLINK}
	if !slices.Equal(r.Reach, want) || !slices.Equal(r.SocketpairReach, want) {
		t.Errorf("%s: families past the filter: socket %v, socketpair %v; want %v", how, r.Reach, r.SocketpairReach, want)
	}
	if !slices.Equal(r.NetlinkReach, []int{unix.NETLINK_ROUTE}) {
		t.Errorf("%s: netlink protocols past the filter: %v, want only NETLINK_ROUTE (0)", how, r.NetlinkReach)
	}
	// IPv6 works in the sandbox where the host has it.
	ipv6 := true
	if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0); err != nil {
		ipv6 = false
	} else {
		unix.Close(fd)
	}
	needed := map[string]bool{"unix stream": true, "unix dgram": true, "unix seqpacket": true,
		"inet tcp": true, "inet udp": true, "inet6 tcp": ipv6, "inet6 udp": ipv6, "netlink route": true}
	if len(r.Open) < 30 {
		t.Errorf("%s: only %d sockets tried: %v", how, len(r.Open), r.Open)
	}
	for name, got := range r.Open {
		if need, known := needed[name]; !known {
			if got != "EAFNOSUPPORT" {
				t.Errorf("%s: socket %s: %s, want EAFNOSUPPORT", how, name, got)
			}
		} else if need && got != "ok" {
			t.Errorf("%s: socket %s: %s, want it to work", how, name, got)
		}
	}
	for name, got := range r.Echo {
		if got != "echoed" && (name != "inet6" || ipv6) {
			t.Errorf("%s: echo over %s: %s", how, name, got)
		}
	}
	if ifs, ok := r.Interfaces.([]any); !ok || len(ifs) != 1 || ifs[0] != "lo" {
		t.Errorf("%s: if_nameindex (NETLINK_ROUTE): %v, want [lo]", how, r.Interfaces)
	}
	if addrs, ok := r.GetAddrInfo.([]any); !ok || !slices.Contains(addrs, any("127.0.0.1")) {
		t.Errorf("%s: getaddrinfo localhost, AI_ADDRCONFIG: %v", how, r.GetAddrInfo)
	}
}

// TestBwrapSocketFamilies runs sockets.py in a cold sandbox (python3 -c),
// and as a cell of a cold ipykernel and of a forked one, which load the
// filter by different roads (bwrap --seccomp; the fork server's
// load_seccomp); the kernels start and run code with it.
func TestBwrapSocketFamilies(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/lib/python3/dist-packages/ipykernel_launcher.py"); err != nil {
		t.Skipf("python3-ipykernel is not installed: %v", err)
	}
	payload := hostile(t, "sockets.py", nil)
	t.Run("script", func(t *testing.T) {
		t.Parallel()
		b := newBwrap(t, func(c *Config) { c.Fork = false })
		var r socketsResult
		launchPy(t, b, payload).result(t, &r)
		checkSockets(t, "python3 -c", r)
	})
	for _, fork := range []bool{false, true} {
		name := map[bool]string{false: "cold ipykernel", true: "forked ipykernel"}[fork]
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			b := newBwrap(t, func(c *Config) { c.Fork = fork })
			t.Cleanup(b.Close) // after the kernel's Close
			out := runCell(t, b, payload)
			if fork {
				b.mu.Lock()
				forkErr, templates := b.forkErr, len(b.templates)
				b.mu.Unlock()
				if forkErr != nil || templates != 1 {
					t.Fatalf("the kernel was not forked: %v (%d templates)", forkErr, templates)
				}
			}
			var r socketsResult
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "{") {
					line = l
				}
			}
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("%s: cell output is not the result: %v\n%s", name, err, out)
			}
			checkSockets(t, name, r)
		})
	}
}

// runCell starts an ipykernel in b, runs code as a cell from outside (with
// jupyter_client, through the kernel's ipc sockets) and returns what the
// cell printed; the cell must succeed.
func runCell(t *testing.T, b *Bwrap, code string) string {
	t.Helper()
	run, work := newDirs(t)
	conn := writeConnection(t, run)
	k := launchIn(t, b, Request{
		Argv:       []string{"/usr/bin/python3", "-m", "ipykernel_launcher", "-f", conn},
		RuntimeDir: run, WorkDir: work,
	})
	k.waitSockets(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", executeScript, conn, code).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status: ok") {
		t.Fatalf("execute: %v: %s\nkernel output:\n%s", err, out, k.out)
	}
	return string(out)
}
