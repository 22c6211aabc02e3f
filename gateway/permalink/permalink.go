// Package permalink records executions as permalinks while they run: it
// owns the id an execution's reply waits for, remembers which session was
// told each id, tells that session when the store drops an id after all,
// and puts the id on the reply.
package permalink

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/gateway/result"
	"github.com/cellgate/cellgate/jupytermsg"
	"github.com/cellgate/cellgate/storage"
)

// Store is a write-behind permalink store: it answers with an id at once
// and makes the cell durable on its own time.
type Store interface {
	Enqueue(cell storage.Cell) (string, error)
}

// Teller is whoever was told a permalink id: a session, which passes a
// drop on to its clients.
type Teller interface {
	Notice(parentHeader []byte, text string)
}

// NoInteracts is how a cell without interact state is stored, whichever
// way it came: the same cell must get the same permalink id.
const NoInteracts = "[]"

// maxToldPerTeller bounds the ids remembered per session: a session that
// runs without end must not grow the ledger without end. Drops of ids
// beyond it are logged, not told.
const maxToldPerTeller = 256

// Ledger remembers who was told each permalink id. It exists before the
// store (whose drop callback it is) and outlives every session.
type Ledger struct {
	log zerolog.Logger

	mu       sync.Mutex
	told     map[string]Teller
	byTeller map[Teller][]string
}

// NewLedger makes an empty ledger.
func NewLedger(log zerolog.Logger) *Ledger {
	return &Ledger{log: log, told: map[string]Teller{}, byTeller: map[Teller][]string{}}
}

// Dropped tells the session that was given id that it could not be stored
// after all. It is the permalink store's drop callback.
func (l *Ledger) Dropped(id string, err error) {
	l.mu.Lock()
	t := l.told[id]
	l.mu.Unlock()
	l.log.Warn().Str("permalink", id).Err(err).Msg("permalink dropped")
	if t != nil {
		t.Notice(nil, fmt.Sprintf("permalink %s could not be saved: %v", id, err))
	}
}

func (l *Ledger) remember(id string, t Teller) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byTeller[t]) >= maxToldPerTeller {
		return
	}
	l.told[id] = t
	l.byTeller[t] = append(l.byTeller[t], id)
}

// Forget drops what t was told; it has ended and has nobody to tell.
func (l *Ledger) Forget(t Teller) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range l.byTeller[t] {
		if l.told[id] == t {
			delete(l.told, id)
		}
	}
	delete(l.byTeller, t)
}

// Told reports whether t was given id (for tests and diagnostics).
func (l *Ledger) Told(id string, t Teller) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.told[id] == t
}

// ResultStore keeps each permalink's latest result (storage.Results).
type ResultStore interface {
	Put(ctx context.Context, id string, body []byte, created time.Time) error
}

// ImageStore keeps a result's large images as files (storage.Files).
type ImageStore interface {
	PutBytes(ctx context.Context, name, contentType string, data []byte, owner storage.FileOwner, permalink string) (storage.UploadedFile, error)
}

// FileRefPrefix marks, in a stored result, an image kept as a file: the
// data of its MIME type is FileRefPrefix + the file's id (the gateway
// puts the image back when it answers the result).
const FileRefPrefix = "cellgate-file:"

// maxResultWrites bounds the results being written at once: a database
// that stalls must not pile up goroutines holding outputs. Results beyond
// it are dropped (logged); the permalinks themselves are not.
const maxResultWrites = 8

// resultWriteTimeout bounds one result's write, and its wait for the
// permalink it belongs to.
const resultWriteTimeout = 30 * time.Second

// Recorder saves cells in the store and records executions as permalinks.
type Recorder struct {
	store   Store
	ledger  *Ledger
	results ResultStore
	images  ImageStore
	writing chan struct{}
	observe func(took time.Duration)
	log     zerolog.Logger
}

// NewRecorder records into store, noting in ledger who was told each id,
// and keeps results in results (nil keeps none), their large images in
// images (nil: they count against the inline budget); observe (may be
// nil) is told how long each save took.
func NewRecorder(store Store, ledger *Ledger, results ResultStore, images ImageStore, observe func(time.Duration), log zerolog.Logger) *Recorder {
	if observe == nil {
		observe = func(time.Duration) {}
	}
	return &Recorder{store: store, ledger: ledger, results: results, images: images, writing: make(chan struct{}, maxResultWrites), observe: observe, log: log}
}

// ImagesApart reports whether large images are kept as files, apart from
// a result's inline budget.
func (r *Recorder) ImagesApart() bool { return r.results != nil && r.images != nil }

// KeepsResults reports whether results are stored with permalinks.
func (r *Recorder) KeepsResults() bool { return r.results != nil }

// Keep stores res as the result of the permalink p is recording, once it
// is recorded, off the caller's goroutine.
func (r *Recorder) Keep(p *Pending, res result.Result) {
	if r.results == nil || p == nil {
		return
	}
	select {
	case r.writing <- struct{}{}:
	default:
		r.log.Warn().Msg("result not stored: too many results are being written")
		return
	}
	go func() {
		defer func() { <-r.writing }()
		id := p.Wait(resultWriteTimeout)
		if id == "" {
			return
		}
		if err := r.KeepNow(id, res); err != nil {
			r.log.Warn().Err(err).Str("permalink", id).Msg("result not stored")
		}
	}()
}

// KeepNow stores res as the result of permalink id.
func (r *Recorder) KeepNow(id string, res result.Result) error {
	if r.results == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), resultWriteTimeout)
	defer cancel()
	res = r.imagesAsFiles(ctx, id, res)
	body, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if err := r.results.Put(ctx, id, body, res.Created); err != nil {
		return fmt.Errorf("store result: %w", err)
	}
	return nil
}

// Save stores a cell and returns its id.
func (r *Recorder) Save(cell storage.Cell) (string, error) {
	began := time.Now()
	id, err := r.store.Enqueue(cell)
	r.observe(time.Since(began))
	if err != nil {
		return "", fmt.Errorf("save permalink: %w", err)
	}
	return id, nil
}

// Record starts recording an execution's code, off the caller's
// goroutine: making it durable (the queue's journal is fsynced) must not
// delay the code. Only the reply that tells the client the id waits for
// it, so a client is never told an id that could still be lost.
func (r *Recorder) Record(code, kernelName string, t Teller) *Pending {
	p := &Pending{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		id, err := r.Save(storage.Cell{Code: code, Language: kernelName, Interacts: NoInteracts})
		if err != nil {
			r.log.Warn().Err(err).Msg("permalink not recorded")
			return
		}
		r.ledger.remember(id, t)
		p.id = id
	}()
	return p
}

// imagesAsFiles stores res's large images as files tagged with permalink
// id and puts references to them in their place; an image that cannot be
// stored is left out, and the result marked truncated.
func (r *Recorder) imagesAsFiles(ctx context.Context, id string, res result.Result) result.Result {
	if r.images == nil {
		return res
	}
	outs := make([]result.Output, 0, len(res.Outputs))
	n := 0
	for _, o := range res.Outputs {
		large := o.LargeImages()
		var data map[string]json.RawMessage
		if len(large) == 0 || json.Unmarshal(o.Data, &data) != nil {
			outs = append(outs, o)
			continue
		}
		for mime, text := range large {
			delete(data, mime)
			image, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(text), ""))
			if err != nil {
				res.Truncated = true
				continue
			}
			n++
			name := fmt.Sprintf("result-image-%d.%s", n, strings.TrimPrefix(mime, "image/"))
			f, err := r.images.PutBytes(ctx, name, mime, image, storage.FileOwner{Session: "result:" + id}, id)
			if err != nil {
				r.log.Warn().Err(err).Str("permalink", id).Msg("a result's image not stored")
				res.Truncated = true
				continue
			}
			data[mime], _ = json.Marshal(FileRefPrefix + f.ID)
		}
		o.Data, _ = json.Marshal(data)
		outs = append(outs, o)
	}
	res.Outputs = outs
	return res
}

// Forget drops what t was told (see Ledger.Forget).
func (r *Recorder) Forget(t Teller) { r.ledger.Forget(t) }

// Pending is a permalink being recorded while its execution runs. A nil
// Pending is an execution that is not recorded.
type Pending struct {
	done chan struct{}
	id   string
}

// Recorded reports whether recording is over (or there is nothing to
// record), and the id if there is one.
func (p *Pending) Recorded() (string, bool) {
	if p == nil {
		return "", true
	}
	select {
	case <-p.done:
		return p.id, true
	default:
		return "", false
	}
}

// Wait returns the id once recorded, or "" if recording takes longer than
// d (the reply then goes without it) or there is nothing to record.
func (p *Pending) Wait(d time.Duration) string {
	if id, ok := p.Recorded(); ok {
		return id
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return p.id
	case <-t.C:
		return ""
	}
}

// Annotate returns reply with metadata.cellgate.permalink set to id; the
// reply itself is not changed. An empty id leaves it as it is.
func Annotate(reply *jupytermsg.Message, id string) *jupytermsg.Message {
	if id == "" {
		return reply
	}
	var meta map[string]json.RawMessage
	if json.Unmarshal(reply.Metadata, &meta) != nil {
		return reply
	}
	if meta == nil {
		meta = map[string]json.RawMessage{}
	}
	meta["cellgate"], _ = json.Marshal(map[string]string{"permalink": id})
	raw, err := json.Marshal(meta)
	if err != nil {
		return reply
	}
	annotated := *reply
	annotated.Metadata = raw
	return &annotated
}

// FromReply reads the id Annotate put on a reply ("" if none).
func FromReply(reply *jupytermsg.Message) string {
	var meta struct {
		Cellgate struct {
			Permalink string `json:"permalink"`
		} `json:"cellgate"`
	}
	if json.Unmarshal(reply.Metadata, &meta) != nil {
		return ""
	}
	return meta.Cellgate.Permalink
}
