package session

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/storage"
)

// Watcher follows a kernel's working directory across executions and
// uploads what each one wrote (storage.Watcher).
type Watcher interface {
	// BeforeExecution takes the state key's changes are measured
	// against; false when none is kept.
	BeforeExecution(key string) bool
	// Tracks reports whether an upload is due when key replies.
	Tracks(key string) bool
	Forget(key string)
	// AfterExecution uploads what key changed; false if key is not
	// tracked.
	AfterExecution(ctx context.Context, key, permalink string) (storage.UploadReport, bool, error)
	// Latest is the id of the latest upload of a file name.
	Latest(name string) (string, bool)
	Close() error
}

// uploader uploads a session's files off the pump, one execution at a
// time in reply order, so storage never stalls the kernel's output. It
// holds an execution's execute_reply until its files are stored or
// ReplyHold passes; files stored later are announced when they land.
type uploader struct {
	sess   *Session
	jobs   chan *uploadJob
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// inFlight has a channel per execution whose upload is not over,
	// closed when it is (WaitUpload).
	inFlight map[string]chan struct{}
}

// uploadJob is one execution's reply waiting for its files.
type uploadJob struct {
	msgID string
	reply *jupytermsg.Message
	// charge is reply's against the kernel message budget: whoever
	// relays the reply hands it on, and a reply never relayed releases it.
	charge *kernelpool.Charge
	p      pendingExecution
	to     string
	// timer relays the reply once ReplyHold passes. Its Stop reports
	// whether that is still to be done: true iff the func will not run, so
	// exactly one of it and the upload relays the reply.
	timer *time.Timer
}

// FileLink is one file an execution wrote, as clients are told of it.
type FileLink struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Size        int64  `json:"size"`
	ContentType string `json:"content_type"`
}

func newUploader(sess *Session) *uploader {
	ctx, cancel := context.WithCancel(context.Background())
	// Every job is a pending execution, so the queue never fills.
	queue := sess.opts.Config.MaxPendingExecutions + 1
	return &uploader{sess: sess, jobs: make(chan *uploadJob, queue), ctx: ctx, cancel: cancel, done: make(chan struct{}), inFlight: map[string]chan struct{}{}}
}

// hold takes over reply, to the execute_request msgID, if its execution
// has files to upload; false means the caller relays it.
func (u *uploader) hold(reply *jupytermsg.Message, charge *kernelpool.Charge, msgID string, p pendingExecution, to string) bool {
	s := u.sess
	if !s.opts.Files.Tracks(msgID) {
		return false
	}
	j := &uploadJob{msgID: msgID, reply: reply, charge: charge, p: p, to: to}
	j.timer = time.AfterFunc(s.opts.Config.ReplyHold, func() {
		s.replay.AppendCharged(jupytermsg.Shell, completeReply(j.reply, j.p.permalink.Wait(0), j.p.wantsFiles, nil), j.to, j.charge)
		s.Notice(j.reply.ParentHeader, "files are still being stored; they are announced when they are")
	})
	u.mu.Lock()
	u.inFlight[msgID] = make(chan struct{})
	u.mu.Unlock()
	select {
	case u.jobs <- j:
		return true
	default:
		u.finished(msgID)
		// Cannot happen while the queue outnumbers pending executions;
		// never block the pump.
		s.opts.Files.Forget(msgID)
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
					if j.timer.Stop() {
						j.charge.Release() // never relayed
					}
					u.finished(j.msgID)
				default:
					return
				}
			}
		case j := <-u.jobs:
			u.upload(j)
		}
	}
}

// finished marks execution msgID's upload over.
func (u *uploader) finished(msgID string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ch := u.inFlight[msgID]; ch != nil {
		close(ch)
		delete(u.inFlight, msgID)
	}
}

// waitFor waits until execution msgID's upload is over (at once if it
// has none), or ctx ends.
func (u *uploader) waitFor(ctx context.Context, msgID string) error {
	u.mu.Lock()
	ch := u.inFlight[msgID]
	u.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (u *uploader) upload(j *uploadJob) {
	defer u.finished(j.msgID)
	s := u.sess
	ctx, cancel := context.WithTimeout(u.ctx, s.opts.Config.UploadTimeout)
	began := time.Now()
	report, _, err := s.opts.Files.AfterExecution(ctx, j.msgID, j.p.permalink.Wait(s.opts.Config.ReplyHold))
	s.metrics.Storage.WithLabelValues("upload").Observe(time.Since(began).Seconds())
	cancel()
	links, notices := u.describe(report)
	if err != nil {
		s.metrics.Errors.WithLabelValues("storage").Inc()
		notices = append(notices, "files could not be stored (storage unavailable)")
		s.log.Warn().Err(err).Str("execution", j.msgID).Msg("upload kernel files")
	}
	inTime := j.timer.Stop()
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	if len(links) > 0 {
		if m, err := s.GatewayMessage(FilesMsgType, j.reply.ParentHeader, map[string]any{"files": links}); err == nil {
			s.replay.Append(jupytermsg.IOPub, m, "")
		}
	}
	if len(notices) > 0 {
		s.Notice(j.reply.ParentHeader, strings.Join(notices, "\n"))
	}
	if inTime {
		s.replay.AppendCharged(jupytermsg.Shell, completeReply(j.reply, j.p.permalink.Wait(0), j.p.wantsFiles, names), j.to, j.charge)
	}
}

// WaitUpload waits until the files execution msgID wrote are stored and
// announced (at once if it wrote none, or the session uploads nothing),
// or ctx ends: a one-shot caller answers with its files, not before.
func (s *Session) WaitUpload(ctx context.Context, msgID string) error {
	if s.uploads == nil {
		return nil
	}
	return s.uploads.waitFor(ctx, msgID)
}

// describe turns an upload's report into links and what clients should be
// told of the rest.
func (u *uploader) describe(report storage.UploadReport) ([]FileLink, []string) {
	var links []FileLink
	var notices []string
	for _, up := range report.Files {
		if up.Skipped != "" {
			notices = append(notices, fmt.Sprintf("%s not stored: %s", up.Name, up.Skipped))
			continue
		}
		links = append(links, FileLink{Name: up.Name, Size: up.Size, ContentType: up.ContentType, URL: u.sess.opts.Link(up.ID, up.Name)})
	}
	if report.Omitted > 0 {
		notices = append(notices, fmt.Sprintf("%d more entries not stored", report.Omitted))
	}
	if report.Truncated {
		notices = append(notices, "the working directory holds too many entries: only part of it was looked at, and some new files may not be stored")
	}
	return links, notices
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

// FileID is the id of the latest upload of a file name the session's
// kernel wrote.
func (s *Session) FileID(name string) (string, bool) {
	if s.opts.Files == nil {
		return "", false
	}
	return s.opts.Files.Latest(name)
}
