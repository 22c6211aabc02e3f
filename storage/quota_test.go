package storage

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testClock is a clock the test moves by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestQuota(bytes int64, files int) (*UploadQuota, *testClock) {
	clock := &testClock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
	return NewUploadQuota(UploadQuotaConfig{BytesPerWindow: bytes, FilesPerWindow: files, Window: time.Hour, Now: clock.Now}), clock
}

func mustReserve(t *testing.T, q *UploadQuota, account string, size int64) QuotaCharge {
	t.Helper()
	c, reason := q.Reserve(account, size)
	if reason != "" {
		t.Fatalf("reserve %d bytes for %s: refused: %s", size, account, reason)
	}
	return c
}

func mustRefuse(t *testing.T, q *UploadQuota, account string, size int64, want string) string {
	t.Helper()
	_, reason := q.Reserve(account, size)
	if reason == "" || !strings.Contains(reason, want) {
		t.Fatalf("reserve %d bytes for %s: reason %q, want one with %q", size, account, reason, want)
	}
	return reason
}

// The byte cap holds per account, summed over its files, and another
// account has its own.
func TestUploadQuotaBytesPerAccount(t *testing.T) {
	q, _ := newTestQuota(1000, -1)
	mustReserve(t, q, "a", 600)
	mustReserve(t, q, "a", 400)
	reason := mustRefuse(t, q, "a", 1, "upload quota of 1000 bytes per 1h is used up")
	if !strings.Contains(reason, "room again in") {
		t.Errorf("reason %q does not say when there is room again", reason)
	}
	mustReserve(t, q, "b", 1000)
	mustRefuse(t, q, "c", 1001, "larger than this address's upload quota of 1000 bytes")
	if bytes, files := q.Used("a"); bytes != 1000 || files != 2 {
		t.Errorf("used %d bytes in %d files, want 1000 in 2", bytes, files)
	}
}

// The file cap counts files, empty ones too.
func TestUploadQuotaFilesPerAccount(t *testing.T) {
	q, _ := newTestQuota(-1, 3)
	for range 3 {
		mustReserve(t, q, "a", 0)
	}
	mustRefuse(t, q, "a", 0, "upload quota of 3 files per 1h is used up")
	mustReserve(t, q, "b", 0)
}

// What was charged stops counting one window (and at most a slot) after
// it was charged, oldest first, and the refusal says when.
func TestUploadQuotaWindowFreesRoom(t *testing.T) {
	q, clock := newTestQuota(1000, -1)
	mustReserve(t, q, "a", 700)
	clock.advance(30 * time.Minute)
	mustReserve(t, q, "a", 300)
	mustRefuse(t, q, "a", 500, "room again in 31m)")
	clock.advance(30*time.Minute + q.slot)
	mustReserve(t, q, "a", 500) // the 700 no longer count, the 300 do
	mustRefuse(t, q, "a", 201, "used up")
	clock.advance(time.Hour + q.slot)
	mustReserve(t, q, "a", 1000)
}

// A refund gives the charge back; a refund after its slot stopped
// counting changes nothing.
func TestUploadQuotaRefund(t *testing.T) {
	q, clock := newTestQuota(1000, 2)
	c := mustReserve(t, q, "a", 1000)
	mustRefuse(t, q, "a", 1, "used up")
	c.Refund()
	if bytes, files := q.Used("a"); bytes != 0 || files != 0 {
		t.Fatalf("after refund: %d bytes in %d files used", bytes, files)
	}
	old := mustReserve(t, q, "a", 1000)
	clock.advance(time.Hour + q.slot)
	mustReserve(t, q, "a", 1000)
	old.Refund()
	if bytes, files := q.Used("a"); bytes != 1000 || files != 1 {
		t.Errorf("a stale refund changed the count: %d bytes in %d files", bytes, files)
	}
	QuotaCharge{}.Refund() // charges nothing, refunds nothing
}

// Accounts whose uploads all stopped counting are forgotten, so an
// address seen once costs nothing a window later.
func TestUploadQuotaForgetsIdleAccounts(t *testing.T) {
	q, clock := newTestQuota(1000, -1)
	for _, account := range []string{"a", "b", "c"} {
		mustReserve(t, q, account, 1)
	}
	clock.advance(time.Hour + q.slot)
	mustReserve(t, q, "d", 1)
	if n := q.Accounts(); n != 1 {
		t.Errorf("%d accounts remembered, want 1", n)
	}
}

// An account's memory is bounded by the slots of one window, whatever
// it uploads.
func TestUploadQuotaMemoryIsBounded(t *testing.T) {
	q, clock := newTestQuota(1<<40, -1)
	for range 10 * quotaSlots {
		mustReserve(t, q, "a", 0)
		clock.advance(q.slot / 2)
	}
	if n := len(q.accounts["a"]); n > quotaSlots+1 {
		t.Errorf("%d slots kept for one account, want at most %d", n, quotaSlots+1)
	}
}

// Concurrent sessions of one account never overshoot its cap together.
func TestUploadQuotaConcurrentReservations(t *testing.T) {
	q, _ := newTestQuota(100*10, -1)
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if _, reason := q.Reserve("a", 10); reason == "" {
					mu.Lock()
					granted++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if granted != 100 {
		t.Errorf("%d files of 10 bytes granted under a 1000-byte cap, want 100", granted)
	}
}

// A quota with neither cap is nil, and nil allows everything.
func TestUploadQuotaNone(t *testing.T) {
	q := NewUploadQuota(UploadQuotaConfig{BytesPerWindow: -1, FilesPerWindow: -1})
	if q != nil {
		t.Fatal("a quota with no cap is not nil")
	}
	if _, reason := q.Reserve("a", 1<<40); reason != "" {
		t.Errorf("nil quota refused: %s", reason)
	}
	if d := NewUploadQuota(UploadQuotaConfig{}).Config(); d.BytesPerWindow != 200<<20 || d.FilesPerWindow != 1000 || d.Window != time.Hour {
		t.Errorf("defaults %+v", d)
	}
}

// Watchers charged to one account share its quota, and a file not stored
// for another reason (here: the server's storage full) is not charged.
func TestWatchersShareTheQuotaOfTheirAccount(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		files := newFiles(s.db, FileLimits{MaxTotalBytes: 1 << 20}, testLogger(t))
		_, _, err := files.RefreshUsage(ctx)
		must(t, err)
		quota, _ := newTestQuota(2<<20, -1)
		upload := func(w *Watcher, dir, name string, seed uint64) UploadedFile {
			t.Helper()
			snap, err := w.Snapshot()
			must(t, err)
			writeFile(t, filepath.Join(dir, name), randomBytes(700<<10, seed))
			report, err := w.UploadChanged(ctx, snap, "")
			must(t, err)
			if len(report.Files) != 1 {
				t.Fatalf("%s: report %+v", name, report.Files)
			}
			return report.Files[0]
		}
		first, firstDir, _ := watch(t, files, FileOwner{Session: "quota-a-" + randomHex(4)})
		second, secondDir, _ := watch(t, files, FileOwner{Session: "quota-b-" + randomHex(4)})
		first.ChargeTo(quota, "addr")
		second.ChargeTo(quota, "addr")

		if f := upload(first, firstDir, "a.bin", 1); f.Skipped != "" {
			t.Fatalf("a.bin skipped: %s", f.Skipped)
		}
		if f := upload(second, secondDir, "b.bin", 2); !strings.Contains(f.Skipped, "storage is full") {
			t.Fatalf("b.bin over the total cap: %+v", f)
		}
		if used, _ := quota.Used("addr"); used != 700<<10 {
			t.Errorf("%d bytes charged after a file the storage refused, want %d", used, 700<<10)
		}
		_, err = files.DeleteExpired(ctx, time.Now().Add(time.Second))
		must(t, err)
		if f := upload(second, secondDir, "c.bin", 3); f.Skipped != "" {
			t.Fatalf("c.bin skipped: %s", f.Skipped)
		}
		_, err = files.DeleteExpired(ctx, time.Now().Add(time.Second))
		must(t, err)
		if f := upload(first, firstDir, "d.bin", 4); !strings.Contains(f.Skipped, "upload quota of 2 MiB per 1h is used up") {
			t.Errorf("d.bin over the account's quota (two watchers' files together): %+v", f)
		}
	})
}
