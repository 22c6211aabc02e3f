package storage

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// The permalink journal makes the write-behind queue durable. Its file is a header followed by
// framed records, appended and fsync'd before Enqueue hands out an id:
//
//	record  = length (uint32 BE, of payload) | CRC-32C (uint32 BE, of payload) | payload
//	payload = kindAdd | attempt (1 byte) | digest (32 bytes) | enqueued (int64 BE, Unix ns) |
//	          id | language | code | interacts                 (each uvarint length + bytes)
//	        | kindDone | id
//
// A crash can tear the last record, and a failing disk can corrupt any; decoding stops at the
// first record that does not check out, and what came before it is kept. Once every pending
// permalink is written the file is truncated back to its header; while some stay pending it is
// rewritten with only those when done records pile up, so it stays within a small multiple of
// the queue's bound.

const (
	journalMagic    = "cellgate permalink queue v1\n"
	journalFile     = "journal"
	journalLockFile = "lock"
	// journalCorruptFile keeps the last journal whose tail could not be decoded, for inspection.
	journalCorruptFile = "journal.corrupt"

	journalKindAdd  = 1
	journalKindDone = 2

	journalFrameBytes = 8
	// maxJournalPayload is far above the largest record (a cell of maxCellBytesLimit), so that a
	// corrupt length cannot make the decoder allocate gigabytes.
	maxJournalPayload = maxCellBytesLimit + 4096
	// journalGarbageSlack is how many done records may accumulate beyond twice the live ones
	// before the file is rewritten.
	journalGarbageSlack = 1024
)

// errJournalClosed is returned by appends after the queue closed its journal.
var errJournalClosed = errors.New("storage: permalink journal closed")

// journalRecord is one decoded record.
type journalRecord struct {
	done     bool
	id       string
	attempt  int
	digest   [sha256.Size]byte
	enqueued time.Time
	cell     Cell
}

func journalCRC(payload []byte) uint32 {
	return crc32.Checksum(payload, crc32.MakeTable(crc32.Castagnoli))
}

// appendJournalRecord appends r, framed, to dst.
func appendJournalRecord(dst []byte, r journalRecord) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, journalFrameBytes)...)
	if r.done {
		dst = append(dst, journalKindDone)
		dst = appendJournalString(dst, r.id)
	} else {
		dst = append(dst, journalKindAdd, byte(r.attempt))
		dst = append(dst, r.digest[:]...)
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.enqueued.UnixNano()))
		for _, s := range [...]string{r.id, r.cell.Language, r.cell.Code, r.cell.Interacts} {
			dst = appendJournalString(dst, s)
		}
	}
	payload := dst[start+journalFrameBytes:]
	binary.BigEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(dst[start+4:], journalCRC(payload))
	return dst
}

func appendJournalString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeJournal decodes a journal file's contents. It returns the records and the length of the
// prefix they fill; the rest is a torn or corrupt tail. An error means the data is not a journal
// at all (another file in its place), which should not be overwritten.
func decodeJournal(data []byte) ([]journalRecord, int, error) {
	if len(data) < len(journalMagic) {
		if !bytes.HasPrefix([]byte(journalMagic), data) {
			return nil, 0, errors.New("storage: not a permalink journal (bad header)")
		}
		return nil, 0, nil // header torn while the file was being created
	}
	if string(data[:len(journalMagic)]) != journalMagic {
		return nil, 0, errors.New("storage: not a permalink journal (bad header)")
	}
	var records []journalRecord
	valid := len(journalMagic)
	for rest := data[valid:]; len(rest) >= journalFrameBytes; {
		n := binary.BigEndian.Uint32(rest)
		if n > maxJournalPayload || uint64(n) > uint64(len(rest)-journalFrameBytes) {
			break
		}
		payload := rest[journalFrameBytes : journalFrameBytes+int(n)]
		if binary.BigEndian.Uint32(rest[4:]) != journalCRC(payload) {
			break
		}
		r, ok := decodeJournalPayload(payload)
		if !ok {
			break
		}
		records = append(records, r)
		valid += journalFrameBytes + int(n)
		rest = rest[journalFrameBytes+int(n):]
	}
	return records, valid, nil
}

func decodeJournalPayload(p []byte) (journalRecord, bool) {
	if len(p) == 0 {
		return journalRecord{}, false
	}
	kind, p := p[0], p[1:]
	var r journalRecord
	var ok bool
	switch kind {
	case journalKindDone:
		r.done = true
		if r.id, p, ok = readJournalString(p); !ok {
			return journalRecord{}, false
		}
	case journalKindAdd:
		if len(p) < 1+sha256.Size+8 {
			return journalRecord{}, false
		}
		r.attempt = int(p[0])
		copy(r.digest[:], p[1:1+sha256.Size])
		r.enqueued = time.Unix(0, int64(binary.BigEndian.Uint64(p[1+sha256.Size:])))
		p = p[1+sha256.Size+8:]
		for _, field := range [...]*string{&r.id, &r.cell.Language, &r.cell.Code, &r.cell.Interacts} {
			if *field, p, ok = readJournalString(p); !ok {
				return journalRecord{}, false
			}
		}
		// The id is a function of the digest: a record that disagrees is not one we wrote.
		if r.attempt >= idAttempts || r.id != idCandidate(r.digest, r.attempt) {
			return journalRecord{}, false
		}
	default:
		return journalRecord{}, false
	}
	if len(p) != 0 || !validID(r.id) {
		return journalRecord{}, false
	}
	return r, true
}

func readJournalString(p []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return "", nil, false
	}
	return string(p[k : k+int(n)]), p[k+int(n):], true
}

// journal is the queue's open journal file.
type journal struct {
	dir  string
	lock *os.File

	// syncMu makes one fsync or rewrite run at a time. It is taken before mu, and held without
	// mu during an fsync, so that other appends can be written meanwhile and made durable
	// together by the next fsync.
	syncMu sync.Mutex

	mu       sync.Mutex
	f        *os.File
	closed   bool
	live     map[string]*queuedCell // appended and not done, by id
	records  int                    // in the file
	nextSeq  uint64
	appended uint64 // appends so far
	synced   uint64 // appends known to be on disk
	// broken is set when a write or fsync failed: the file may end in a torn record, after
	// which nothing appended could be decoded, so it is rewritten before the next append.
	broken error
	buf    []byte
}

// openJournal locks dir and reads its journal. It returns the pending records in the order they
// were appended, and how many bytes of corrupt tail were discarded. The caller builds its items
// from them and passes them to rewrite, which starts a fresh file.
func openJournal(dir string) (*journal, []journalRecord, int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("storage: permalink journal: create %s: %w", dir, err)
	}
	// Kernels run as another local account, and the journal holds every user's code.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("storage: permalink journal: restrict %s: %w", dir, err)
	}
	lock, err := lockDir(dir, journalLockFile, "permalink journal")
	if err != nil {
		return nil, nil, 0, err
	}
	j := &journal{dir: dir, lock: lock, live: make(map[string]*queuedCell)}
	path := filepath.Join(dir, journalFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return j, nil, 0, nil
	}
	if err != nil {
		_ = lock.Close()
		return nil, nil, 0, fmt.Errorf("storage: permalink journal: read %s: %w", path, err)
	}
	records, valid, err := decodeJournal(data)
	if err != nil {
		_ = lock.Close()
		return nil, nil, 0, fmt.Errorf("%w: %s", err, path)
	}
	discarded := len(data) - valid
	if discarded > 0 && valid > len(journalMagic) {
		// Only a crash mid-append tears the tail; anything else is worth a look.
		if err := os.WriteFile(filepath.Join(dir, journalCorruptFile), data, 0o600); err != nil {
			_ = lock.Close()
			return nil, nil, 0, fmt.Errorf("storage: permalink journal: keep corrupt copy: %w", err)
		}
	}

	var order []string
	pending := make(map[string]journalRecord)
	for _, r := range records {
		if r.done {
			delete(pending, r.id)
			continue
		}
		if _, dup := pending[r.id]; !dup {
			order = append(order, r.id)
		}
		pending[r.id] = r
	}
	live := make([]journalRecord, 0, len(pending))
	for _, id := range order {
		if r, ok := pending[id]; ok {
			live = append(live, r)
			delete(pending, id) // an id re-added after done appears twice in order
		}
	}
	return j, live, discarded, nil
}

// rewrite replaces the file with one holding only items (in journal order), atomically (write, fsync, rename, fsync
// the directory). Callers other than the opener hold syncMu and mu. On failure the journal is
// left broken, so that the next append tries again first.
func (j *journal) rewrite(items []*queuedCell) (err error) {
	defer func() {
		if err != nil && j.broken == nil {
			j.broken = err
		}
	}()
	buf := append(j.buf[:0], journalMagic...)
	for _, item := range items {
		buf = appendJournalRecord(buf, item.record())
	}
	j.buf = buf[:0]

	tmpPath := filepath.Join(j.dir, journalFile+".tmp")
	f, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("storage: permalink journal: %w", err)
	}
	if _, err := f.Write(buf); err != nil {
		_ = f.Close()
		return fmt.Errorf("storage: permalink journal: write %s: %w", tmpPath, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("storage: permalink journal: fsync %s: %w", tmpPath, err)
	}
	if err := os.Rename(tmpPath, filepath.Join(j.dir, journalFile)); err != nil {
		_ = f.Close()
		return fmt.Errorf("storage: permalink journal: %w", err)
	}
	// The new file is in place: appends must go to it from now on, even if the directory's fsync
	// fails (the old file is unlinked).
	if j.f != nil {
		_ = j.f.Close()
	}
	j.f = f
	clear(j.live)
	for _, item := range items {
		j.live[item.id] = item
		j.nextSeq = max(j.nextSeq, item.seq+1)
	}
	j.records = len(items)
	if err := syncDir(j.dir); err != nil {
		return err
	}
	j.synced = j.appended
	j.broken = nil
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("storage: permalink journal: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("storage: permalink journal: fsync %s: %w", dir, err)
	}
	return nil
}

// add appends item and returns once it is on disk.
func (j *journal) add(item *queuedCell) error {
	for {
		j.mu.Lock()
		if j.closed {
			j.mu.Unlock()
			return errJournalClosed
		}
		if j.broken == nil {
			break
		}
		j.mu.Unlock()
		if err := j.repair(); err != nil {
			return err
		}
	}
	item.seq = j.nextSeq
	j.nextSeq++
	j.buf = appendJournalRecord(j.buf[:0], item.record())
	if _, err := j.f.Write(j.buf); err != nil {
		j.broken = err
		j.mu.Unlock()
		return fmt.Errorf("storage: permalink journal: append: %w", err)
	}
	j.live[item.id] = item
	j.records++
	j.appended++
	mine := j.appended
	j.mu.Unlock()

	if err := j.syncThrough(mine); err != nil {
		// Not acknowledged: leave it out of the rewrite that repairs the file.
		j.mu.Lock()
		if j.live[item.id] == item {
			delete(j.live, item.id)
		}
		j.mu.Unlock()
		return err
	}
	return nil
}

// syncThrough returns once the first n appends are on disk, fsyncing for all appends written so
// far when no other fsync already covered them.
func (j *journal) syncThrough(n uint64) error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	if j.synced >= n {
		j.mu.Unlock()
		return nil
	}
	if j.closed {
		j.mu.Unlock()
		return errJournalClosed
	}
	if j.broken != nil {
		// An fsync after a failed one can succeed without the lost pages ever reaching the
		// disk: what was appended before the failure stays in doubt.
		err := j.broken
		j.mu.Unlock()
		return fmt.Errorf("storage: permalink journal: append in doubt after %w", err)
	}
	f, upTo := j.f, j.appended
	j.mu.Unlock()

	err := f.Sync()
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		// After a failed fsync the kernel may have dropped the dirty pages: what was appended
		// is in doubt, so the file is rewritten from what is known to be live.
		j.broken = err
		return fmt.Errorf("storage: permalink journal: fsync: %w", err)
	}
	j.synced = max(j.synced, upTo)
	return nil
}

// repair rewrites a file that a failed write or fsync may have left torn.
func (j *journal) repair() error {
	var cause error
	err := j.rewriteLive(func() bool { cause = j.broken; return cause != nil })
	if err != nil && cause != nil {
		return fmt.Errorf("storage: permalink journal unusable after %w: %w", cause, err)
	}
	return err
}

// rewriteLive rewrites the file from the live items if need, checked once no append or fsync is
// running, still holds.
func (j *journal) rewriteLive(need func() bool) error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return errJournalClosed
	}
	if !need() {
		return nil
	}
	return j.rewrite(j.liveItems())
}

// liveItems are the items not yet done, in journal order (rewrite keeps it).
func (j *journal) liveItems() []*queuedCell {
	items := make([]*queuedCell, 0, len(j.live))
	for _, item := range j.live {
		items = append(items, item)
	}
	slices.SortFunc(items, func(a, b *queuedCell) int { return cmp.Compare(a.seq, b.seq) })
	return items
}

// done records that item no longer needs replaying (written or dropped). It is not fsync'd: if
// it is lost, the item is replayed and written again, which finds it stored.
func (j *journal) done(item *queuedCell) error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return errJournalClosed
	}
	if j.live[item.id] != item {
		j.mu.Unlock()
		return nil
	}
	delete(j.live, item.id)
	if len(j.live) == 0 && j.broken == nil {
		// Nothing is pending: every add is matched by a done, so dropping them all is safe
		// even if the truncation does not reach the disk before a crash.
		err := j.f.Truncate(int64(len(journalMagic)))
		if err != nil {
			j.broken = err
		} else {
			j.records = 0
		}
		j.mu.Unlock()
		if err != nil {
			return fmt.Errorf("storage: permalink journal: truncate: %w", err)
		}
		return nil
	}
	var err error
	if j.broken == nil {
		j.buf = appendJournalRecord(j.buf[:0], journalRecord{done: true, id: item.id})
		if _, err = j.f.Write(j.buf); err != nil {
			j.broken = err
		} else {
			j.records++
		}
	}
	compact := j.records > 2*len(j.live)+journalGarbageSlack
	j.mu.Unlock()
	if err != nil {
		return fmt.Errorf("storage: permalink journal: append: %w", err)
	}
	if compact {
		return j.compact()
	}
	return nil
}

// compact drops the done records and the adds they cancel once they outnumber the live ones.
func (j *journal) compact() error {
	return j.rewriteLive(func() bool { return j.records > 2*len(j.live)+journalGarbageSlack })
}

// close releases the file and the directory lock; what is live stays in the file for the next
// start.
func (j *journal) close() error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	var errs []error
	if j.f != nil {
		errs = append(errs, j.f.Close())
	}
	errs = append(errs, j.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage: close permalink journal: %w", err)
	}
	return nil
}

func (item *queuedCell) record() journalRecord {
	return journalRecord{id: item.id, attempt: item.attempt, digest: item.digest, enqueued: item.enqueued, cell: item.cell}
}
