package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// FileLimits bound what a kernel can push into storage. Start from DefaultFileLimits; zero fields
// take its values too.
type FileLimits struct {
	// MaxFileBytes is the largest file uploaded. Default 10 MiB.
	MaxFileBytes int64
	// MaxFilesPerExecution is how many files one execution may upload. Default 50.
	MaxFilesPerExecution int
	// MaxSessionBytes caps the bytes uploaded for one Watcher (one kernel session). Default 100 MiB.
	MaxSessionBytes int64
	// MaxDepth is how many levels of subdirectories are scanned. Default 3; negative: top level only.
	MaxDepth int
	// MaxEntries caps the directory entries examined per scan, so that a kernel creating millions
	// of files costs a bounded amount of work. Default 10000.
	MaxEntries int
	// MaxTrackedExecutions bounds the executions whose baseline (BeforeExecution) one Watcher
	// keeps at once: each is a snapshot of the directory, up to MaxEntries entries. The files of
	// executions queued beyond it are not uploaded. Default 64.
	MaxTrackedExecutions int
	// IncludeHidden also uploads names starting with "." and __pycache__ directories, which are
	// otherwise ignored silently: they are the caches and settings of the kernel's libraries.
	IncludeHidden bool
	// MaxTotalBytes caps the bytes of all stored files, every session's together: once reached,
	// files are not uploaded (each is listed with the reason) until expiry (DeleteExpired) or an
	// operator makes room. Zero: no cap.
	MaxTotalBytes int64
}

// DefaultFileLimits are the limits when nothing is said: the one place each of them lives.
func DefaultFileLimits() FileLimits {
	return FileLimits{
		MaxFileBytes:         10 << 20,
		MaxFilesPerExecution: 50,
		MaxSessionBytes:      100 << 20,
		MaxDepth:             3,
		MaxEntries:           10000,
		MaxTrackedExecutions: 64,
	}
}

// withDefaults fills zero and negative fields from DefaultFileLimits; a negative MaxDepth, which
// asks for the top level only, becomes 0.
func (l FileLimits) withDefaults() FileLimits {
	d := DefaultFileLimits()
	fillPositive(&l.MaxFileBytes, d.MaxFileBytes)
	fillPositive(&l.MaxFilesPerExecution, d.MaxFilesPerExecution)
	fillPositive(&l.MaxSessionBytes, d.MaxSessionBytes)
	switch {
	case l.MaxDepth == 0:
		l.MaxDepth = d.MaxDepth
	case l.MaxDepth < 0:
		l.MaxDepth = 0
	}
	fillPositive(&l.MaxEntries, d.MaxEntries)
	fillPositive(&l.MaxTrackedExecutions, d.MaxTrackedExecutions)
	return l
}

// maxSkipNotices bounds the skipped entries listed one by one in an UploadReport.
const maxSkipNotices = 50

// UploadedFile is one entry of an UploadReport: a file uploaded, or an entry skipped and why.
type UploadedFile struct {
	Name        string // relative to the working directory, '/'-separated
	ID          string // for OpenFile and file URLs; empty when skipped
	Size        int64
	ContentType string
	SHA256      string // hex
	Skipped     string // why it was not uploaded; empty when uploaded
}

// UploadReport lists what an execution created or changed in its working directory.
type UploadReport struct {
	// Files lists uploaded files and skipped entries, in name order.
	Files []UploadedFile
	// Omitted counts further skipped entries not listed (beyond 50 notices).
	Omitted int
	// Truncated is set when the directory had more than MaxEntries entries; the rest were not
	// examined.
	Truncated bool
	// After is the directory as this upload found it, for measuring later changes against
	// without scanning it again. Nil when the directory could not be scanned.
	After *Snapshot
}

// Watcher finds and uploads the files a kernel writes in its working directory. It holds the
// directory open; Close it when the session ends. Files uploaded stay after that.
type Watcher struct {
	files *Files
	owner FileOwner

	// uploading makes one upload (UploadChanged or AfterExecution) run at a time, so that each
	// checks the session total after the previous one's files, and so that an AfterExecution
	// rebases the executions waiting on it before the next upload starts. It is held through
	// database writes: only those two take it.
	uploading sync.Mutex

	// mu guards what follows and is never held across a database call: Snapshot runs on the
	// client's send path before each execution, and must not wait for a slow database.
	mu           sync.Mutex
	rootFD       int
	closed       bool
	sessionBytes int64
	// quota is charged each file before it is uploaded, as account's (ChargeTo).
	quota   *UploadQuota
	account string

	// execMu guards the executions' baselines. It is apart from mu, which Snapshot holds through a
	// directory scan, so that Tracks, asked on the kernel's output path, never waits for one.
	execMu    sync.Mutex
	baselines map[string]baseline
	gen       uint64            // bumped at the start of every AfterExecution upload
	latest    map[string]string // file name → id of its latest upload by AfterExecution
}

// baseline is the state an execution's changes are measured against, and the gen it was taken
// or last rebased at.
type baseline struct {
	snap Snapshot
	gen  uint64
}

// Watch opens dir, a kernel's working directory, for Snapshot and UploadChanged, or for
// BeforeExecution and AfterExecution.
func (f *Files) Watch(dir string, owner FileOwner) (*Watcher, error) {
	fd, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	return &Watcher{files: f, owner: owner, rootFD: fd, baselines: map[string]baseline{}, latest: map[string]string{}}, nil
}

// Snapshot records the directory's state; take one before each execution.
func (w *Watcher) Snapshot() (Snapshot, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return Snapshot{}, errors.New("storage: watcher closed")
	}
	return scanTree(w.rootFD, w.files.limits)
}

// SessionBytes is the total size of the files uploaded through this watcher.
func (w *Watcher) SessionBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sessionBytes
}

// ChargeTo makes every file this watcher uploads from now on count against account's share of
// quota, shared with the other watchers charged to account; a file over it is not uploaded and is
// listed with the reason.
func (w *Watcher) ChargeTo(quota *UploadQuota, account string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.quota, w.account = quota, account
}

// Close releases the directory.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if err := closeRoot(w.rootFD); err != nil {
		return fmt.Errorf("storage: close kernel directory: %w", err)
	}
	return nil
}

// UploadChanged uploads the regular files created or changed since before, tagging them with
// permalink (may be empty). Entries that are not uploaded are listed with the reason: symlinks,
// special files, names that are not text, files over a limit, directories too deep. A file is
// stored whole or not at all.
//
// When the database fails, the files not yet uploaded are listed as skipped and the error is
// returned along with the report.
func (w *Watcher) UploadChanged(ctx context.Context, before Snapshot, permalink string) (UploadReport, error) {
	w.uploading.Lock()
	defer w.uploading.Unlock()
	return w.uploadChanged(ctx, before, permalink)
}

// uploadChanged is UploadChanged, w.uploading held.
func (w *Watcher) uploadChanged(ctx context.Context, before Snapshot, permalink string) (UploadReport, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return UploadReport{}, errors.New("storage: watcher closed")
	}
	// A descriptor of our own, so that Close need not wait for the upload: the directory stays
	// open, and the number is not reused for another file, until we are done.
	rootFD, err := dupRoot(w.rootFD)
	sessionBytes := w.sessionBytes // only uploads, which we exclude, change it
	quota, account := w.quota, w.account
	w.mu.Unlock()
	if err != nil {
		return UploadReport{}, err
	}
	defer closeRoot(rootFD)

	limits := w.files.limits
	after, err := scanTree(rootFD, limits)
	if err != nil {
		return UploadReport{}, err
	}

	report := UploadReport{Truncated: after.truncated, After: &after}
	notices := 0
	skip := func(name, reason string) {
		if notices >= maxSkipNotices {
			report.Omitted++
			return
		}
		notices++
		report.Files = append(report.Files, UploadedFile{Name: name, Skipped: reason})
	}

	names := make([]string, 0, len(after.entries))
	for name := range after.entries {
		names = append(names, name)
	}
	slices.Sort(names)

	uploaded := 0
	var storeErr error
	for _, rel := range names {
		stamp := after.entries[rel]
		if prev, ok := before.entries[rel]; ok && prev == stamp {
			continue
		}
		switch {
		case stamp.badName:
			skip(printableName(rel), "file name is not printable UTF-8 text")
		case stamp.longName:
			skip(rel, fmt.Sprintf("path longer than %d bytes", maxNameBytes))
		case stamp.tooDeep:
			skip(rel+"/", fmt.Sprintf("directory nested more than %d levels deep; not scanned", limits.MaxDepth))
		case stamp.mode == modeDir:
			// its files are entries of their own
		case stamp.mode != modeRegular:
			skip(rel, describeMode(stamp.mode))
		case stamp.nlink > 1:
			skip(rel, hardLinkReason)
		case storeErr != nil:
			skip(rel, "not uploaded: storage unavailable")
		case uploaded >= limits.MaxFilesPerExecution:
			skip(rel, fmt.Sprintf("more than %d files changed in one execution", limits.MaxFilesPerExecution))
		case stamp.size > limits.MaxFileBytes:
			skip(rel, fmt.Sprintf("larger than the %d-byte file limit", limits.MaxFileBytes))
		case sessionBytes+stamp.size > limits.MaxSessionBytes:
			skip(rel, fmt.Sprintf("session storage limit of %d bytes reached", limits.MaxSessionBytes))
		default:
			charge, over := quota.Reserve(account, stamp.size)
			if over != "" {
				skip(rel, over)
				break
			}
			file, reason, err := w.files.uploadOne(ctx, rootFD, rel, stamp, w.owner, permalink, sessionBytes)
			switch {
			case err != nil:
				charge.Refund()
				storeErr = err
				skip(rel, "not uploaded: storage unavailable")
			case reason != "":
				charge.Refund()
				skip(rel, reason)
			default:
				uploaded++
				sessionBytes += file.Size
				w.mu.Lock()
				w.sessionBytes += file.Size
				w.mu.Unlock()
				report.Files = append(report.Files, file)
			}
		}
	}
	if storeErr != nil {
		return report, fmt.Errorf("storage: upload files: %w", storeErr)
	}
	return report, nil
}

// BeforeExecution takes the snapshot that the changes of the execution key (an execute_request's
// msg_id, say) are measured against; call it before the execution is sent to the kernel. False
// means none is kept, and AfterExecution will upload nothing for key: the snapshot failed, or
// MaxTrackedExecutions executions are already waiting. Calling it again for a key tracked
// replaces the key's baseline.
func (w *Watcher) BeforeExecution(key string) bool {
	// The generation is read before the scan: an upload that starts during
	// the scan may find files the scan missed (an execution still running
	// wrote them), so this baseline must count as older and be rebased.
	w.execMu.Lock()
	gen := w.gen
	w.execMu.Unlock()
	snap, err := w.Snapshot()
	if err != nil {
		return false
	}
	w.execMu.Lock()
	defer w.execMu.Unlock()
	if len(w.baselines) >= w.files.limits.MaxTrackedExecutions {
		return false
	}
	w.baselines[key] = baseline{snap: snap, gen: gen}
	return true
}

// Tracks reports whether key has a baseline, that is, whether AfterExecution would upload its
// files.
func (w *Watcher) Tracks(key string) bool {
	w.execMu.Lock()
	defer w.execMu.Unlock()
	_, ok := w.baselines[key]
	return ok
}

// Forget drops key's baseline: its files will not be uploaded (nor, unless the directory is
// scanned again, be measured against it).
func (w *Watcher) Forget(key string) {
	w.execMu.Lock()
	delete(w.baselines, key)
	w.execMu.Unlock()
}

// AfterExecution uploads, tagged with permalink, what changed since key's baseline, as
// UploadChanged does, and forgets the baseline. False means key had none: nothing was done.
//
// Executions queue in the kernel: one sent while another still ran took its snapshot before the
// other's files existed. So every execution that was waiting when this upload started is rebased
// onto the directory as this upload found it, and no file is uploaded again under the next
// execution. The upload's own scan serves: scanning again for this would double the cost of
// every execution in a large directory. Executions whose BeforeExecution came after the upload
// started keep their own, later, snapshots.
func (w *Watcher) AfterExecution(ctx context.Context, key, permalink string) (UploadReport, bool, error) {
	w.uploading.Lock()
	defer w.uploading.Unlock()
	w.execMu.Lock()
	before, ok := w.baselines[key]
	delete(w.baselines, key)
	if ok {
		w.gen++
	}
	gen := w.gen
	w.execMu.Unlock()
	if !ok {
		return UploadReport{}, false, nil
	}

	report, err := w.uploadChanged(ctx, before.snap, permalink)

	w.execMu.Lock()
	defer w.execMu.Unlock()
	if report.After != nil {
		for k, b := range w.baselines {
			if b.gen < gen {
				w.baselines[k] = baseline{snap: *report.After, gen: gen}
			}
		}
	}
	for _, f := range report.Files {
		// Bounded like a scan: a kernel that writes new names without end
		// (empty files cost no session bytes) must not grow this.
		if _, known := w.latest[f.Name]; f.Skipped == "" && (known || len(w.latest) < w.files.limits.MaxEntries) {
			w.latest[f.Name] = f.ID
		}
	}
	return report, true, err
}

// Latest is the id of the latest upload, by AfterExecution, of the file name (as in
// UploadedFile.Name).
func (w *Watcher) Latest(name string) (id string, ok bool) {
	w.execMu.Lock()
	defer w.execMu.Unlock()
	id, ok = w.latest[name]
	return id, ok
}
