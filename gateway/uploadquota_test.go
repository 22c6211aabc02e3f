package gateway

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/storage"
)

// manualClock is a clock the test moves by hand: the upload quota's
// window passes without waiting for it.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newKernelFrom is POST /kernel from source address ip: the session's
// client address.
func (e *testEnv) newKernelFrom(ip net.IP) kernelAnswer {
	e.t.Helper()
	resp, err := clientFrom(ip).PostForm(e.url("/kernel"), url.Values{"timeout": {"60"}})
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var k kernelAnswer
	if err := json.NewDecoder(resp.Body).Decode(&k); err != nil || resp.StatusCode != http.StatusOK || k.ID == "" {
		e.t.Fatalf("POST /kernel from %s: %d %+v %v", ip, resp.StatusCode, k, err)
	}
	return k
}

// uploadsOf runs code in c's session and returns the names of the files
// announced for it and what its client was told; the execution must have
// finished normally.
func uploadsOf(t *testing.T, c *wsClient, code string) ([]string, string) {
	t.Helper()
	id, frames, links := execFiles(c, code)
	if reply, ok := replyTo(frames, id); !ok || reply.str("status") != "ok" {
		t.Fatalf("execution of %q did not finish normally: %+v", code, reply)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	slices.Sort(names)
	return names, streamText(frames)
}

// The upload quota is per client address, shared by the address's
// sessions: two sessions of one address together reach it, and the file
// over it is not stored (its client told why, the computation going on);
// a session of another address still uploads; the window passing frees
// the quota; and the file count is capped as the bytes are.
func TestUploadQuotaPerAddress(t *testing.T) {
	clock := &manualClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	env, _ := newStorageEnv(t, func(c *Config) {
		c.Storage.UploadQuota = storage.UploadQuotaConfig{BytesPerWindow: 3000, FilesPerWindow: 4, Window: time.Hour, Now: clock.Now}
		// The reply waits for its upload, notices included, however slow
		// the machine.
		c.Storage.ReplyHold, c.Storage.UploadTimeout = guard, guard
	})
	first := env.dialSage(env.newKernelFrom(firstAddr).ID, "")
	second := env.dialSage(env.newKernelFrom(firstAddr).ID, "")
	other := env.dialSage(env.newKernelFrom(secondAddr).ID, "")

	if names, told := uploadsOf(t, first, "open('a.bin', 'wb').write(b'a' * 2000)"); !slices.Equal(names, []string{"a.bin"}) {
		t.Fatalf("first session: stored %v, told %q", names, told)
	}
	names, told := uploadsOf(t, second, "open('b.bin', 'wb').write(b'b' * 2000)\nprint('went on')")
	if len(names) != 0 || !strings.Contains(told, "b.bin not stored: this address's upload quota of 3000 bytes per 1h is used up") {
		t.Errorf("second session of the address: stored %v, told %q; want b.bin refused for the address's quota", names, told)
	}
	if !strings.Contains(told, "went on") {
		t.Errorf("the computation did not go on: %q", told)
	}
	if names, told := uploadsOf(t, other, "open('c.bin', 'wb').write(b'c' * 2000)"); !slices.Equal(names, []string{"c.bin"}) {
		t.Errorf("session of another address: stored %v, told %q", names, told)
	}

	clock.advance(time.Hour + time.Minute)
	if names, told := uploadsOf(t, second, "open('d.bin', 'wb').write(b'd' * 2000)"); !slices.Equal(names, []string{"d.bin"}) {
		t.Errorf("after the window: stored %v, told %q", names, told)
	}
	// One file of the four counted: three more, then refused.
	names, told = uploadsOf(t, first, "for i in range(5):\n    open('small%d.txt' % i, 'w').write('x')")
	if !slices.Equal(names, []string{"small0.txt", "small1.txt", "small2.txt"}) ||
		!strings.Contains(told, "small3.txt not stored: this address's upload quota of 4 files per 1h is used up") {
		t.Errorf("file count: stored %v, told %q; want three stored, then the quota's refusal", names, told)
	}
}

// The case: /service runs of one address writing files. Once the
// address's quota is used up, a run still succeeds, lists the files that
// were stored, and says in its stderr why the others were not.
func TestServiceRunsShareTheUploadQuota(t *testing.T) {
	env, _ := newStorageEnv(t, func(c *Config) {
		c.Storage.UploadQuota = storage.UploadQuotaConfig{BytesPerWindow: 50 << 10, FilesPerWindow: -1}
		c.Storage.UploadTimeout = guard
	})
	code := "import os\nfor i in range(3):\n    open(f'part{i}.bin', 'wb').write(os.urandom(10 << 10))"
	var stored []int
	for run := range 2 {
		var res serviceResult
		if r := env.postForm("/service", url.Values{"code": {code}, "language": {"python3"}}, &res); r.StatusCode != http.StatusOK || !res.Success {
			t.Fatalf("/service run %d: %d %+v", run, r.StatusCode, res)
		}
		stored = append(stored, len(res.Files))
		if run == 1 && !strings.Contains(res.Stderr, "part2.bin not stored: this address's upload quota of 51200 bytes per 1h is used up") {
			t.Errorf("second run's stderr %q does not say why part2.bin was not stored", res.Stderr)
		}
	}
	if !slices.Equal(stored, []int{3, 2}) {
		t.Errorf("files stored per run %v, want [3 2]: 50 KiB per address, 30 KiB a run", stored)
	}
}
