package gateway

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/storage"
)

// maxSnapshots bounds the executions whose "before" state a session keeps;
// the files of executions queued beyond it are not uploaded (and the
// client is told).
const maxSnapshots = 64

// executionFiles remembers, per execute_request, the working directory as
// it was before, so the files it created can be found after.
type executionFiles struct {
	watcher *storage.Watcher
	baseURL string

	mu     sync.Mutex
	before map[string]baseline
	gen    uint64            // bumped at the start of every upload
	byName map[string]string // file name → id of its latest upload
}

// baseline is the state an execution's changes are measured against.
type baseline struct {
	snap storage.Snapshot
	gen  uint64
}

// watchFiles starts watching a Sage-cell session's working directory.
func (s *Server) watchFiles(sess *session, baseURL string) {
	if s.cfg.Storage.Files == nil {
		return
	}
	w, err := s.cfg.Storage.Files.Watch(sess.kernel.WorkDir, storage.FileOwner{Session: sess.id, Kernel: sess.spec})
	if err != nil {
		sess.logger.Warn().Err(err).Msg("kernel files will not be uploaded")
		return
	}
	sess.files = &executionFiles{watcher: w, before: map[string]baseline{}, byName: map[string]string{}, baseURL: baseURL}
}

// beforeExecute takes the snapshot the upload compares against; false
// when none is kept for this execution.
func (f *executionFiles) beforeExecute(msgID string) bool {
	snap, err := f.watcher.Snapshot()
	if err != nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.before) >= maxSnapshots {
		return false
	}
	f.before[msgID] = baseline{snap: snap, gen: f.gen}
	return true
}

// tracks reports whether an upload is due when msgID replies.
func (f *executionFiles) tracks(msgID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.before[msgID]
	return ok
}

func (f *executionFiles) forget(msgID string) {
	f.mu.Lock()
	delete(f.before, msgID)
	f.mu.Unlock()
}

// afterExecute uploads what the execution wrote and returns the links and
// what the client should be told about the rest.
//
// Executions queue in the kernel: one sent while another still ran took
// its snapshot before the other's files existed. So every execution that
// was waiting when an upload started measures from the directory as that
// upload found it, and no file is uploaded again under the next execution.
// The upload's own scan serves: scanning again for this would double the
// cost of every execution in a large directory.
func (f *executionFiles) afterExecute(ctx context.Context, msgID, permalink string) ([]fileLink, []string, error) {
	f.mu.Lock()
	before, ok := f.before[msgID]
	delete(f.before, msgID)
	if ok {
		f.gen++
	}
	gen := f.gen
	f.mu.Unlock()
	if !ok {
		return nil, nil, nil
	}
	report, err := f.watcher.UploadChanged(ctx, before.snap, permalink)
	if report.After != nil {
		f.mu.Lock()
		for id, b := range f.before {
			// Executions sent since the upload started (gen) keep their
			// own snapshots: they were taken after the ones waiting.
			if b.gen < gen {
				f.before[id] = baseline{snap: *report.After, gen: gen}
			}
		}
		f.mu.Unlock()
	}
	var links []fileLink
	var notices []string
	for _, up := range report.Files {
		if up.Skipped != "" {
			notices = append(notices, fmt.Sprintf("%s not stored: %s", up.Name, up.Skipped))
			continue
		}
		links = append(links, fileLink{Name: up.Name, Size: up.Size, ContentType: up.ContentType,
			URL: f.baseURL + "files/" + up.ID + "/" + escapePath(up.Name)})
		f.mu.Lock()
		f.byName[up.Name] = up.ID
		f.mu.Unlock()
	}
	if report.Omitted > 0 {
		notices = append(notices, fmt.Sprintf("%d more entries not stored", report.Omitted))
	}
	if report.Truncated {
		notices = append(notices, "the working directory holds too many entries: only part of it was looked at, and some new files may not be stored")
	}
	if err != nil {
		return links, notices, fmt.Errorf("upload files of %s: %w", msgID, err)
	}
	return links, notices, nil
}

func (f *executionFiles) lookup(name string) (string, bool) {
	if f == nil {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.byName[name]
	return id, ok
}

func (f *executionFiles) close() {
	if f != nil {
		_ = f.watcher.Close()
	}
}

// uploader uploads a session's files off the pump, one execution at a
// time in reply order, so storage never stalls the kernel's output. It
// holds an execution's execute_reply until its files are stored or
// ReplyHold passes; files stored later are announced when they land.
type uploader struct {
	sess   *session
	jobs   chan *uploadJob
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// uploadJob is one execution's reply waiting for its files.
type uploadJob struct {
	msgID string
	reply *jupytermsg.Message
	p     pendingExecution
	to    string
	// timer relays the reply once ReplyHold passes. Its Stop reports
	// whether that is still to be done: true iff the func will not run, so
	// exactly one of it and the upload relays the reply.
	timer *time.Timer
}

func newUploader(sess *session) *uploader {
	ctx, cancel := context.WithCancel(context.Background())
	return &uploader{sess: sess, jobs: make(chan *uploadJob, maxSnapshots+1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// hold takes over reply, to the execute_request msgID, if its execution
// has files to upload; false means the caller relays it.
func (u *uploader) hold(reply *jupytermsg.Message, msgID string, p pendingExecution, to string) bool {
	if !u.sess.files.tracks(msgID) {
		return false
	}
	j := &uploadJob{msgID: msgID, reply: reply, p: p, to: to}
	j.timer = time.AfterFunc(u.sess.cfg.Storage.ReplyHold, func() {
		u.sess.log.append(jupytermsg.Shell, rewriteReply(j.reply, j.p.permalink.wait(0), j.p.wantsFiles, nil), j.to)
		u.sess.notice(j.reply.ParentHeader, "files are still being stored; they are announced when they are")
	})
	select {
	case u.jobs <- j:
		return true
	default:
		// Cannot happen while jobs outnumber snapshots; never block the pump.
		u.sess.files.forget(msgID)
		// A timer that already fired has relayed the reply.
		return !j.timer.Stop()
	}
}

func (u *uploader) run() {
	defer close(u.done)
	for {
		select {
		case <-u.ctx.Done():
			for {
				select {
				case j := <-u.jobs:
					j.timer.Stop()
				default:
					return
				}
			}
		case j := <-u.jobs:
			u.upload(j)
		}
	}
}

func (u *uploader) upload(j *uploadJob) {
	s := u.sess
	ctx, cancel := context.WithTimeout(u.ctx, s.cfg.Storage.UploadTimeout)
	began := time.Now()
	links, notices, err := s.files.afterExecute(ctx, j.msgID, j.p.permalink.wait(s.cfg.Storage.ReplyHold))
	s.metrics.storage.WithLabelValues("upload").Observe(time.Since(began).Seconds())
	cancel()
	if err != nil {
		s.metrics.errors.WithLabelValues("storage").Inc()
		notices = append(notices, "files could not be stored (storage unavailable)")
		s.logger.Warn().Err(err).Msg("upload kernel files")
	}
	inTime := j.timer.Stop()
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	if len(links) > 0 {
		if m, err := s.gatewayMessage(filesMsgType, j.reply.ParentHeader, map[string]any{"files": links}); err == nil {
			s.log.append(jupytermsg.IOPub, m, "")
		}
	}
	if len(notices) > 0 {
		s.notice(j.reply.ParentHeader, strings.Join(notices, "\n"))
	}
	if inTime {
		s.log.append(jupytermsg.Shell, rewriteReply(j.reply, j.p.permalink.wait(0), j.p.wantsFiles, names), j.to)
	}
}

// stop abandons uploads in flight; the session is over.
func (u *uploader) stop() {
	if u != nil {
		u.cancel()
	}
}

// wait returns once the uploader no longer uses the working directory.
func (u *uploader) wait() {
	if u != nil {
		<-u.done
	}
}
