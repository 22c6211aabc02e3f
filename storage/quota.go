package storage

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// UploadQuotaConfig bounds what the kernels of one account upload over a rolling window, every
// session of the account together (the gateway's accounts are client addresses). Start from
// DefaultUploadQuota; zero fields take its values, negative caps are no cap.
type UploadQuotaConfig struct {
	// BytesPerWindow is how many bytes of files one account may upload per Window. Default 200 MiB.
	BytesPerWindow int64
	// FilesPerWindow is how many files one account may upload per Window. Default 1000.
	FilesPerWindow int
	// Window is the rolling window the caps count over. Default one hour.
	Window time.Duration
	// Now is the quota's clock; nil is time.Now. Tests move their own.
	Now func() time.Time
}

// DefaultUploadQuota is the upload quota when nothing is said: the one place its defaults live.
func DefaultUploadQuota() UploadQuotaConfig {
	return UploadQuotaConfig{BytesPerWindow: 200 << 20, FilesPerWindow: 1000, Window: time.Hour}
}

// WithDefaults fills zero fields from DefaultUploadQuota.
func (c UploadQuotaConfig) WithDefaults() UploadQuotaConfig {
	d := DefaultUploadQuota()
	if c.BytesPerWindow == 0 {
		c.BytesPerWindow = d.BytesPerWindow
	}
	if c.FilesPerWindow == 0 {
		c.FilesPerWindow = d.FilesPerWindow
	}
	if c.Window <= 0 {
		c.Window = d.Window
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// quotaSlots is how many slots a window is counted in: an upload leaves the count between one
// window and one window and a slot after it was made, and an account costs at most this many
// slots of memory whatever it uploads (zero-byte files included).
const quotaSlots = 60

// UploadQuota counts the bytes and files each account uploaded over the last window. A nil
// *UploadQuota allows everything. It is safe for concurrent use.
type UploadQuota struct {
	cfg  UploadQuotaConfig
	slot time.Duration

	mu       sync.Mutex
	accounts map[string][]quotaSlot // oldest slot first
	swept    time.Time
}

// quotaSlot is what an account uploaded during one slot, numbered from the clock's zero.
type quotaSlot struct {
	index int64
	bytes int64
	files int
}

// NewUploadQuota makes the quota cfg describes (defaults filled in); nil when neither cap is set.
func NewUploadQuota(cfg UploadQuotaConfig) *UploadQuota {
	cfg = cfg.WithDefaults()
	if cfg.BytesPerWindow < 0 && cfg.FilesPerWindow < 0 {
		return nil
	}
	return &UploadQuota{cfg: cfg, slot: max(time.Nanosecond, cfg.Window/quotaSlots), accounts: map[string][]quotaSlot{}}
}

// Config is the quota's settings, defaults filled in.
func (q *UploadQuota) Config() UploadQuotaConfig { return q.cfg }

// QuotaCharge is one file's share of an account's quota, taken before it is uploaded; a file
// not stored after all gives it back (Refund). The zero QuotaCharge charges nothing.
type QuotaCharge struct {
	quota   *UploadQuota
	account string
	slot    int64
	bytes   int64
}

// Reserve charges a file of size bytes to account, or says why the account may not upload it
// now (and when it may again): an empty reason means the file is charged.
func (q *UploadQuota) Reserve(account string, size int64) (QuotaCharge, string) {
	if q == nil {
		return QuotaCharge{}, ""
	}
	now := q.cfg.Now()
	current := now.UnixNano() / int64(q.slot)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.sweepLocked(now)
	slots := q.liveLocked(account, now)
	var bytes int64
	var files int
	for _, s := range slots {
		bytes += s.bytes
		files += s.files
	}
	if limit := q.cfg.FilesPerWindow; limit >= 0 && files+1 > limit {
		return QuotaCharge{}, fmt.Sprintf("this address's upload quota of %d files per %s is used up (%s)", limit, shortDuration(q.cfg.Window),
			q.roomAgain(slots, now, func(s quotaSlot) bool { files -= s.files; return files+1 <= limit }))
	}
	if limit := q.cfg.BytesPerWindow; limit >= 0 && bytes+size > limit {
		what := fmt.Sprintf("this address's upload quota of %s per %s", byteCount(limit), shortDuration(q.cfg.Window))
		if size > limit {
			return QuotaCharge{}, "larger than " + what
		}
		return QuotaCharge{}, fmt.Sprintf("%s is used up (%s)", what,
			q.roomAgain(slots, now, func(s quotaSlot) bool { bytes -= s.bytes; return bytes+size <= limit }))
	}
	if n := len(slots); n > 0 && slots[n-1].index == current {
		slots[n-1].bytes += size
		slots[n-1].files++
	} else {
		slots = append(slots, quotaSlot{index: current, bytes: size, files: 1})
	}
	q.accounts[account] = slots
	return QuotaCharge{quota: q, account: account, slot: current, bytes: size}, ""
}

// Refund gives back what c charged, if its slot still counts.
func (c QuotaCharge) Refund() {
	q := c.quota
	if q == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	slots := q.accounts[c.account]
	for i := range slots {
		if slots[i].index == c.slot {
			slots[i].bytes -= c.bytes
			slots[i].files--
			return
		}
	}
}

// Used is what account has uploaded in the window that ends now.
func (q *UploadQuota) Used(account string) (bytes int64, files int) {
	if q == nil {
		return 0, 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, s := range q.liveLocked(account, q.cfg.Now()) {
		bytes += s.bytes
		files += s.files
	}
	return bytes, files
}

// Accounts is how many accounts the quota remembers.
func (q *UploadQuota) Accounts() int {
	if q == nil {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.accounts)
}

// expiry is when what was charged in slot index stops counting.
func (q *UploadQuota) expiry(index int64) time.Time {
	return time.Unix(0, (index+1)*int64(q.slot)).Add(q.cfg.Window)
}

// liveLocked drops account's slots that no longer count and returns the rest.
func (q *UploadQuota) liveLocked(account string, now time.Time) []quotaSlot {
	slots := q.accounts[account]
	first := 0
	for first < len(slots) && !q.expiry(slots[first].index).After(now) {
		first++
	}
	if first == len(slots) {
		delete(q.accounts, account)
		return nil
	}
	slots = slots[first:]
	q.accounts[account] = slots
	return slots
}

// sweepLocked forgets, once a window, the accounts whose uploads all stopped counting, so the
// quota remembers only the accounts of the last window or so.
func (q *UploadQuota) sweepLocked(now time.Time) {
	if now.Sub(q.swept) < q.cfg.Window {
		return
	}
	q.swept = now
	for account := range q.accounts {
		q.liveLocked(account, now)
	}
}

// roomAgain says when enough of slots stops counting for fits to hold, oldest first.
func (q *UploadQuota) roomAgain(slots []quotaSlot, now time.Time, fits func(quotaSlot) bool) string {
	for _, s := range slots {
		if fits(s) {
			wait := q.expiry(s.index).Sub(now)
			return "room again in " + shortDuration((wait + time.Second - 1).Truncate(time.Second))
		}
	}
	return "room again within " + shortDuration(q.cfg.Window)
}

// shortDuration is d as people write it: "1h", "1h30m", "45s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// byteCount is n in MiB when it is a whole number of them, else in bytes.
func byteCount(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}
