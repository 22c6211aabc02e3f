package storage

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

const (
	// fileChunkSize is GridFS's default; chunks are written in batches of fileChunkBatch.
	fileChunkSize  = 255 * 1024
	fileChunkBatch = 16
	maxNameBytes   = 1024

	// uploadsCollection holds a marker per upload in progress, stored before its first chunk and
	// removed once it is committed or cleaned up; SweepOrphans finds abandoned uploads by them
	// without scanning the chunks.
	uploadsCollection = filesBucket + ".uploads"
	// orphanAge is how old a marker must be for SweepOrphans to clean up its upload. An upload
	// that has run for half of it gives up rather than commit, so the sweep never removes the
	// chunks of an upload that could still become visible.
	orphanAge = time.Hour
)

// ErrIncompleteFile is returned (along with ErrNotFound) for a stored file whose chunks are not
// all there: an upload cleaned up after its files document was stored. It is never served.
var ErrIncompleteFile = errors.New("storage: file incomplete")

// Files stores files written by kernels in a GridFS bucket ("files.files", "files.chunks"), in
// the GridFS layout, so any GridFS client can read them.
//
// It writes the chunks itself rather than through the driver's upload stream, which allocates a
// 16 MiB buffer per file and whose bucket is not safe for concurrent use. The files document is
// inserted last, so a file is complete or invisible: an upload that fails deletes what it stored,
// files document first; one cut short by a crash is found by its marker and removed by
// SweepOrphans; and OpenFile checks the last chunk, so a file whose chunks went missing anyway
// is not served.
type Files struct {
	filesColl   *mongo.Collection
	chunksColl  *mongo.Collection
	uploadsColl *mongo.Collection
	limits      FileLimits
	log         zerolog.Logger
	buffers     sync.Pool // *[]byte of fileChunkSize*fileChunkBatch
	// cleanupTimeout bounds the removal of a failed upload, which runs after the upload's own
	// context may have ended; what it does not remove in time is left to SweepOrphans.
	cleanupTimeout time.Duration
	// stored is the bytes of all stored files, for MaxTotalBytes: counted once (RefreshUsage),
	// then kept up to date by this process's uploads and deletions (other instances' are seen
	// at the next RefreshUsage).
	stored atomic.Int64
}

func newFiles(db *mongo.Database, limits FileLimits, log zerolog.Logger) *Files {
	f := &Files{
		filesColl:   db.Collection(filesBucket + ".files"),
		chunksColl:  db.Collection(filesBucket + ".chunks"),
		uploadsColl: db.Collection(uploadsCollection),
		limits:      limits.withDefaults(),
		log:         log,

		cleanupTimeout: 10 * time.Second,
	}
	f.buffers.New = func() any {
		buf := make([]byte, fileChunkSize*fileChunkBatch)
		return &buf
	}
	return f
}

// Limits are the limits in force, defaults filled in.
func (f *Files) Limits() FileLimits { return f.limits }

// FileOwner says whose files these are; it is stored with each file.
type FileOwner struct {
	Session string
	Kernel  string
}

type fileMeta struct {
	Session     string `bson:"session"`
	Kernel      string `bson:"kernel"`
	Permalink   string `bson:"permalink"`
	Name        string `bson:"name"`
	Size        int64  `bson:"size"`
	SHA256      string `bson:"sha256"`
	ContentType string `bson:"contentType"`
	// Kind is empty for the files kernels wrote, resultImageKind for a
	// stored result's image (PutBytes).
	Kind string `bson:"kind,omitempty"`
}

// resultImageKind marks the files PutBytes stores.
const resultImageKind = "result-image"

// fileDoc is a GridFS files document.
type fileDoc struct {
	ID         string    `bson:"_id"`
	Length     int64     `bson:"length"`
	ChunkSize  int32     `bson:"chunkSize"`
	UploadDate time.Time `bson:"uploadDate"`
	Filename   string    `bson:"filename"`
	Metadata   fileMeta  `bson:"metadata"`
}

// uploadOne stores one file found below rootFD as owner's, given the session's bytes so far. A
// non-empty reason means it was skipped (and nothing is left stored); an error means the database
// failed.
func (f *Files) uploadOne(ctx context.Context, rootFD int, rel string, want entryStamp, owner FileOwner, permalink string, sessionBytes int64) (UploadedFile, string, error) {
	limits := f.limits
	file, opened, reason := openRegularInTree(rootFD, rel, want)
	if reason != "" {
		return UploadedFile{}, reason, nil
	}
	defer file.Close()
	if opened.size > limits.MaxFileBytes {
		return UploadedFile{}, fmt.Sprintf("larger than the %d-byte file limit", limits.MaxFileBytes), nil
	}
	if limits.MaxTotalBytes > 0 && f.stored.Load()+opened.size > limits.MaxTotalBytes {
		return UploadedFile{}, fmt.Sprintf("the server's file storage is full (its cap is %d MiB)", limits.MaxTotalBytes>>20), nil
	}

	id := newFileID()
	up := chunkUploader{files: f, id: id, hash: sha256.New(),
		maxChunks: (limits.MaxFileBytes + fileChunkSize - 1) / fileChunkSize}
	defer func() {
		if !up.committed {
			up.abort(ctx)
		}
	}()

	// Read at most one byte more than allowed: a file growing while it is read is caught without
	// reading all of it.
	src := io.LimitReader(file, limits.MaxFileBytes+1)
	bufp := f.buffers.Get().(*[]byte)
	defer f.buffers.Put(bufp)
	buf := *bufp
	for {
		filled, eof, err := fillChunks(src, buf)
		if err != nil {
			return UploadedFile{}, "could not be read", nil
		}
		if up.size+int64(filled) > limits.MaxFileBytes {
			return UploadedFile{}, fmt.Sprintf("grew beyond the %d-byte file limit while being read", limits.MaxFileBytes), nil
		}
		if err := up.write(ctx, buf[:filled]); err != nil {
			return UploadedFile{}, "", err
		}
		if eof {
			break
		}
	}

	now, err := stampFile(file)
	if err != nil || now.size != opened.size || now.mtime != opened.mtime || now.ctime != opened.ctime || up.size != opened.size {
		return UploadedFile{}, "changed while being read", nil
	}
	if sessionBytes+up.size > limits.MaxSessionBytes {
		return UploadedFile{}, fmt.Sprintf("session storage limit of %d bytes reached", limits.MaxSessionBytes), nil
	}
	if up.marked && time.Since(up.started) > orphanAge/2 {
		// SweepOrphans may soon take this upload for abandoned and delete its chunks.
		return UploadedFile{}, "", fmt.Errorf("storage: store file %s: upload took longer than %v", rel, orphanAge/2)
	}

	return f.commit(ctx, &up, rel, detectContentType(rel, up.head), owner, permalink, "")
}

// commit makes an upload whose chunks are all written a file: its files document is inserted.
func (f *Files) commit(ctx context.Context, up *chunkUploader, name, contentType string, owner FileOwner, permalink, kind string) (UploadedFile, string, error) {
	result := UploadedFile{
		Name:        name,
		ID:          up.id,
		Size:        up.size,
		ContentType: contentType,
		SHA256:      hex.EncodeToString(up.hash.Sum(nil)),
	}
	doc := fileDoc{
		ID:         up.id,
		Length:     up.size,
		ChunkSize:  fileChunkSize,
		UploadDate: time.Now().UTC().Truncate(time.Millisecond),
		Filename:   name,
		Metadata: fileMeta{
			Session:     owner.Session,
			Kernel:      owner.Kernel,
			Permalink:   permalink,
			Name:        name,
			Size:        up.size,
			SHA256:      result.SHA256,
			ContentType: result.ContentType,
			Kind:        kind,
		},
	}
	up.insertTried = true // from here on, even a failed insert may have stored the document
	if _, err := f.filesColl.InsertOne(ctx, doc); err != nil {
		up.inDoubt = true
		return UploadedFile{}, "", fmt.Errorf("storage: store file %s: %w", name, err)
	}
	up.committed = true
	f.stored.Add(up.size)
	up.unmark(ctx)
	return result, "", nil
}

// PutBytes stores data as a file called name for owner, tagged with permalink: what a stored
// result keeps outside its inline budget (large images). The file limits hold as for uploads;
// ByPermalink does not list these files (they are part of the result, not files it wrote).
func (f *Files) PutBytes(ctx context.Context, name, contentType string, data []byte, owner FileOwner, permalink string) (UploadedFile, error) {
	limits := f.limits
	switch {
	case !ValidFileName(name):
		return UploadedFile{}, fmt.Errorf("storage: put %q: invalid file name", name)
	case int64(len(data)) > limits.MaxFileBytes:
		return UploadedFile{}, fmt.Errorf("storage: put %s: larger than the %d-byte file limit", name, limits.MaxFileBytes)
	case limits.MaxTotalBytes > 0 && f.stored.Load()+int64(len(data)) > limits.MaxTotalBytes:
		return UploadedFile{}, fmt.Errorf("storage: put %s: the server's file storage is full", name)
	}
	up := chunkUploader{files: f, id: newFileID(), hash: sha256.New(),
		maxChunks: (int64(len(data)) + fileChunkSize - 1) / fileChunkSize}
	defer func() {
		if !up.committed {
			up.abort(ctx)
		}
	}()
	for off := 0; off < len(data); off += fileChunkSize * fileChunkBatch {
		if err := up.write(ctx, data[off:min(off+fileChunkSize*fileChunkBatch, len(data))]); err != nil {
			return UploadedFile{}, err
		}
	}
	res, _, err := f.commit(ctx, &up, name, contentType, owner, permalink, resultImageKind)
	return res, err
}

// fillChunks reads into buf until it is full or the source ends; only the last chunk of a file
// may be short, so short reads in between must not end a chunk.
func fillChunks(src io.Reader, buf []byte) (int, bool, error) {
	n, err := io.ReadFull(src, buf)
	switch {
	case err == nil:
		return n, false, nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return n, true, nil
	default:
		return n, false, err
	}
}

type chunkUploader struct {
	files     *Files
	id        string
	maxChunks int64 // the most chunks this upload can write, for the sweep
	hash      hash.Hash
	head      []byte // first bytes, for content type detection
	size      int64
	next      int32 // next chunk index

	marked      bool // the upload's marker is stored, so chunks may be
	started     time.Time
	inDoubt     bool // a write failed, and so may still land after the cleanup
	insertTried bool // the files document may be stored
	committed   bool
}

// uploadMarker is an uploadsCollection document.
type uploadMarker struct {
	ID      string    `bson:"_id"` // the file's
	Started time.Time `bson:"started"`
	// MaxChunks bounds the chunk numbers the upload may have written.
	MaxChunks int64 `bson:"max_chunks"`
	// Aborted is set when the upload failed after sending its files document, which may thus
	// still land: the sweep deletes it again.
	Aborted bool `bson:"aborted"`
}

func (u *chunkUploader) write(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if !u.marked {
		u.started = time.Now().UTC().Truncate(time.Millisecond)
		marker := uploadMarker{ID: u.id, Started: u.started, MaxChunks: u.maxChunks}
		if _, err := u.files.uploadsColl.InsertOne(ctx, marker); err != nil {
			return fmt.Errorf("storage: start file upload: %w", err)
		}
		u.marked = true
	}
	if u.head == nil {
		u.head = append([]byte(nil), data[:min(len(data), 512)]...)
	}
	u.hash.Write(data)
	u.size += int64(len(data))
	docs := make([]any, 0, fileChunkBatch)
	for start := 0; start < len(data); start += fileChunkSize {
		end := min(start+fileChunkSize, len(data))
		docs = append(docs, bson.D{
			{Key: "_id", Value: chunkID(u.id, int64(u.next))},
			{Key: "files_id", Value: u.id},
			{Key: "n", Value: u.next},
			{Key: "data", Value: bson.Binary{Data: data[start:end]}},
		})
		u.next++
	}
	if _, err := u.files.chunksColl.InsertMany(ctx, docs); err != nil {
		u.inDoubt = true
		return fmt.Errorf("storage: store file chunks: %w", err)
	}
	return nil
}

// unmark removes the marker of a committed upload. Failing is harmless: the sweep finds the file
// complete and removes only the marker.
func (u *chunkUploader) unmark(ctx context.Context) {
	if !u.marked {
		return
	}
	if _, err := u.files.uploadsColl.DeleteOne(ctx, bson.D{{Key: "_id", Value: u.id}}); err != nil {
		u.files.log.Debug().Err(err).Str("file_id", u.id).Msg("could not remove the marker of a finished upload")
	}
}

// abort removes what an upload that will not be committed stored. The files document goes first,
// so that no reader can find the file while its chunks are being removed; if that fails, the
// chunks stay (the file is then whole, only unannounced). Chunks go from the last one down, so
// that a removal cut short leaves the last chunk missing, which OpenFile checks. Whatever is left
// stays marked for SweepOrphans, as does an upload with a write that failed: a write that timed
// out on our side may still be applied by the server after our cleanup.
func (u *chunkUploader) abort(ctx context.Context) {
	if !u.marked {
		return // nothing stored: the marker precedes the first chunk
	}
	// Clean up even when ctx was what ended the upload.
	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), u.files.cleanupTimeout)
	defer cancel()
	byID := func(id string) bson.D { return bson.D{{Key: "_id", Value: id}} }
	warn := func(err error, what string) {
		u.files.log.Warn().Err(err).Str("file_id", u.id).Msg("could not remove " + what + " of a failed upload; SweepOrphans will")
	}
	if u.insertTried {
		update := bson.D{{Key: "$set", Value: bson.D{{Key: "aborted", Value: true}}}}
		if _, err := u.files.uploadsColl.UpdateOne(cleanupCtx, byID(u.id), update); err != nil {
			warn(err, "anything")
			return
		}
		if _, err := u.files.filesColl.DeleteOne(cleanupCtx, byID(u.id)); err != nil {
			warn(err, "the files document")
			return
		}
	}
	if err := u.files.deleteChunks(cleanupCtx, u.id, int64(u.next)); err != nil {
		warn(err, "the chunks")
		return
	}
	if !u.inDoubt {
		if _, err := u.files.uploadsColl.DeleteOne(cleanupCtx, byID(u.id)); err != nil {
			u.files.log.Debug().Err(err).Str("file_id", u.id).Msg("could not remove the marker of a failed upload")
		}
	}
}

// deleteChunks removes chunks n-1 down to 0 of a file, one by one by _id (see chunkID: a delete by
// files_id would scan the whole chunks collection on FerretDB).
func (f *Files) deleteChunks(ctx context.Context, fileID string, n int64) error {
	for i := n - 1; i >= 0; i-- {
		if _, err := f.chunksColl.DeleteOne(ctx, bson.D{{Key: "_id", Value: chunkID(fileID, i)}}); err != nil {
			return fmt.Errorf("storage: remove chunk %d of file %s: %w", i, fileID, err)
		}
	}
	return nil
}

// maxSweepBatch bounds the uploads one SweepOrphans call cleans up.
const maxSweepBatch = 1000

// SweepOrphans removes what abandoned uploads left behind (a process that died mid-upload, or
// a cleanup that failed while the database was down): chunks with no files document, and files
// documents of uploads that failed. It finds them by their uploads' markers, not by scanning the
// chunks, which on FerretDB would read every stored byte. It looks only at uploads started more
// than an hour ago, so it never touches one in progress, and cleans up at most 1000 per call. It
// returns how many uploads it cleaned up; call it at start-up and then periodically.
func (f *Files) SweepOrphans(ctx context.Context) (int, error) {
	return f.sweepOrphans(ctx, time.Now().Add(-orphanAge))
}

func (f *Files) sweepOrphans(ctx context.Context, startedBefore time.Time) (int, error) {
	cur, err := f.uploadsColl.Find(ctx,
		bson.D{{Key: "started", Value: bson.D{{Key: "$lt", Value: startedBefore.UTC()}}}},
		options.Find().SetLimit(maxSweepBatch))
	if err != nil {
		return 0, fmt.Errorf("storage: sweep orphan uploads: %w", err)
	}
	var markers []uploadMarker
	if err := cur.All(ctx, &markers); err != nil {
		return 0, fmt.Errorf("storage: sweep orphan uploads: %w", err)
	}
	swept := 0
	for _, m := range markers {
		byID := bson.D{{Key: "_id", Value: m.ID}}
		if !m.Aborted {
			err := f.filesColl.FindOne(ctx, byID).Err()
			if err == nil {
				// Committed, or its process died right after the insert: the file is whole
				// (its chunks were all written first), only its marker is left.
				if _, err := f.uploadsColl.DeleteOne(ctx, byID); err != nil {
					return swept, fmt.Errorf("storage: sweep orphan uploads: %w", err)
				}
				continue
			}
			if !errors.Is(err, mongo.ErrNoDocuments) {
				return swept, fmt.Errorf("storage: sweep orphan uploads: %w", err)
			}
		} else if _, err := f.filesColl.DeleteOne(ctx, byID); err != nil {
			return swept, fmt.Errorf("storage: sweep orphan uploads: %w", err)
		}
		if err := f.deleteChunks(ctx, m.ID, m.MaxChunks); err != nil {
			return swept, fmt.Errorf("storage: sweep orphan uploads: %w", err)
		}
		if _, err := f.uploadsColl.DeleteOne(ctx, byID); err != nil {
			return swept, fmt.Errorf("storage: sweep orphan uploads: %w", err)
		}
		swept++
	}
	return swept, nil
}

// chunkID is the _id of chunk n of a file. GridFS allows any unique _id; a derived one lets a
// reader fetch a chunk by _id, which FerretDB 1.24 (SQLite) serves with a primary key lookup,
// whereas any other filter (such as files_id and n) makes it scan and decode the whole collection.
func chunkID(fileID string, n int64) string {
	return fileID + "." + strconv.FormatInt(n, 10)
}

func newFileID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// entryNameProblem says why a directory entry's name cannot be stored and reported as is; names
// come from untrusted code and end up in JSON, URLs and BSON.
func entryNameProblem(name string) string {
	switch {
	case name == "" || name == "." || name == "..":
		return "reserved name"
	case len(name) > 255:
		return "name too long"
	case !utf8.ValidString(name):
		return "not UTF-8"
	case strings.ContainsRune(name, '/'):
		return "contains a slash"
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == utf8.RuneError || unicode.Is(unicode.Cf, r) {
			// Cf includes bidirectional overrides, which can disguise a name.
			return "contains control characters"
		}
	}
	return ""
}

// ValidFileName reports whether name can name a stored file: a relative, '/'-separated path
// with no empty, "." or ".." component and only printable UTF-8. Names from URLs should be checked
// with it before use.
func ValidFileName(name string) bool {
	if name == "" || len(name) > maxNameBytes {
		return false
	}
	for part := range strings.SplitSeq(name, "/") {
		if entryNameProblem(part) != "" {
			return false
		}
	}
	return true
}

// printableName makes a name that failed entryNameProblem safe to report.
func printableName(name string) string {
	name = strings.ToValidUTF8(name, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return '\uFFFD'
		}
		return r
	}, name)
}

// FileInfo describes a stored file.
type FileInfo struct {
	ID          string
	Name        string
	Size        int64
	ContentType string
	SHA256      string // hex; a strong ETag
	UploadDate  time.Time
	Session     string
	Kernel      string
	Permalink   string
}

// Stat describes the file id. A non-empty name must be the file's name (so that a URL naming the
// wrong file does not serve it); otherwise ErrNotFound.
func (f *Files) Stat(ctx context.Context, id, name string) (FileInfo, error) {
	doc, err := f.find(ctx, id, name)
	if err != nil {
		return FileInfo{}, err
	}
	return doc.info(), nil
}

// RefreshUsage counts the bytes of all stored files (MaxTotalBytes is checked against it) and
// returns it with the number of files.
func (f *Files) RefreshUsage(ctx context.Context) (files, bytes int64, err error) {
	cur, err := f.filesColl.Find(ctx, bson.D{}, options.Find().SetProjection(bson.D{{Key: "length", Value: 1}}))
	if err != nil {
		return 0, 0, fmt.Errorf("storage: count stored files: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		var doc struct {
			Length int64 `bson:"length"`
		}
		if err := cur.Decode(&doc); err != nil {
			return 0, 0, fmt.Errorf("storage: count stored files: %w", err)
		}
		files++
		bytes += doc.Length
	}
	if err := cur.Err(); err != nil {
		return 0, 0, fmt.Errorf("storage: count stored files: %w", err)
	}
	f.stored.Store(bytes)
	return files, bytes, nil
}

// expireBatch bounds the files one DeleteExpired call removes.
const expireBatch = 500

// DeleteExpired removes the files uploaded before cutoff, with their chunks, at most 500 per
// call (call again while it returns 500). Each goes as an upload abort does: its files document
// first (no reader finds it after), then its chunks from the last.
func (f *Files) DeleteExpired(ctx context.Context, cutoff time.Time) (int, error) {
	cur, err := f.filesColl.Find(ctx,
		bson.D{{Key: "uploadDate", Value: bson.D{{Key: "$lt", Value: cutoff.UTC()}}}},
		options.Find().SetProjection(bson.D{{Key: "length", Value: 1}}).SetLimit(expireBatch))
	if err != nil {
		return 0, fmt.Errorf("storage: find expired files: %w", err)
	}
	var expired []struct {
		ID     string `bson:"_id"`
		Length int64  `bson:"length"`
	}
	if err := cur.All(ctx, &expired); err != nil {
		return 0, fmt.Errorf("storage: find expired files: %w", err)
	}
	deleted := 0
	for _, doc := range expired {
		res, err := f.filesColl.DeleteOne(ctx, bson.D{{Key: "_id", Value: doc.ID}})
		if err != nil {
			return deleted, fmt.Errorf("storage: delete expired file %s: %w", doc.ID, err)
		}
		if res.DeletedCount == 0 {
			continue // another instance took it
		}
		if err := f.deleteChunks(ctx, doc.ID, (doc.Length+fileChunkSize-1)/fileChunkSize); err != nil {
			return deleted, err
		}
		f.stored.Add(-doc.Length)
		deleted++
	}
	return deleted, nil
}

// maxPermalinkFiles bounds the files ByPermalink lists.
const maxPermalinkFiles = 100

// ByPermalink lists the files the latest execution of permalink wrote, uploaded at or after
// since: of one session (the one that uploaded last), newest first, one per name, at most 100.
func (f *Files) ByPermalink(ctx context.Context, permalink string, since time.Time) ([]FileInfo, error) {
	if !validID(permalink) {
		return nil, nil
	}
	cur, err := f.filesColl.Find(ctx,
		bson.D{
			{Key: "metadata.permalink", Value: permalink},
			{Key: "uploadDate", Value: bson.D{{Key: "$gte", Value: since.UTC()}}},
			{Key: "metadata.kind", Value: bson.D{{Key: "$exists", Value: false}}},
		},
		options.Find().SetSort(bson.D{{Key: "uploadDate", Value: -1}}).SetLimit(4*maxPermalinkFiles))
	if err != nil {
		return nil, fmt.Errorf("storage: files of permalink %s: %w", permalink, err)
	}
	defer cur.Close(ctx)
	var files []FileInfo
	seen := map[string]bool{}
	session := ""
	for cur.Next(ctx) && len(files) < maxPermalinkFiles {
		var doc fileDoc
		if err := cur.Decode(&doc); err != nil {
			return nil, fmt.Errorf("storage: files of permalink %s: %w", permalink, err)
		}
		if session == "" {
			session = doc.Metadata.Session
		}
		if doc.Metadata.Session != session || seen[doc.Filename] {
			continue
		}
		seen[doc.Filename] = true
		files = append(files, doc.info())
	}
	if err := cur.Err(); err != nil {
		return nil, fmt.Errorf("storage: files of permalink %s: %w", permalink, err)
	}
	return files, nil
}

func (f *Files) find(ctx context.Context, id, name string) (fileDoc, error) {
	if !validID(id) || (name != "" && !ValidFileName(name)) {
		return fileDoc{}, ErrNotFound
	}
	var doc fileDoc
	err := f.filesColl.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fileDoc{}, ErrNotFound
	}
	if err != nil {
		return fileDoc{}, fmt.Errorf("storage: find file %s: %w", id, err)
	}
	if name != "" && doc.Filename != name {
		return fileDoc{}, ErrNotFound
	}
	return doc, nil
}

func (d fileDoc) info() FileInfo {
	return FileInfo{
		ID:          d.ID,
		Name:        d.Filename,
		Size:        d.Length,
		ContentType: d.Metadata.ContentType,
		SHA256:      d.Metadata.SHA256,
		UploadDate:  d.UploadDate,
		Session:     d.Metadata.Session,
		Kernel:      d.Metadata.Kernel,
		Permalink:   d.Metadata.Permalink,
	}
}

// OpenFile opens a stored file for reading (see Stat for name). The reader seeks without reading
// what it skips, so it serves HTTP Range requests directly; it reads with ctx. Only files
// uploaded by Files can be read (their chunks have derived ids, see chunkID).
func (f *Files) OpenFile(ctx context.Context, id, name string) (*FileReader, error) {
	doc, err := f.find(ctx, id, name)
	if err != nil {
		return nil, err
	}
	if doc.Length < 0 || (doc.Length > 0 && doc.ChunkSize <= 0) {
		return nil, fmt.Errorf("storage: open file %s: invalid length %d or chunk size %d", id, doc.Length, doc.ChunkSize)
	}
	r := &FileReader{
		Info:      doc.info(),
		ctx:       ctx,
		chunks:    f.chunksColl,
		chunkSize: int64(doc.ChunkSize),
		loaded:    -1,
	}
	if doc.Length > 0 {
		// Before any header is sent: chunks are written in order before the files document, and
		// removed from the last one down, so a file with its last chunk has them all. The chunk
		// stays loaded, for the range requests that start by reading the end.
		if err := r.load((doc.Length - 1) / r.chunkSize); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// FileReader reads a stored file: an io.ReadSeekCloser.
type FileReader struct {
	Info FileInfo

	ctx       context.Context
	chunks    *mongo.Collection
	chunkSize int64
	offset    int64
	loaded    int64 // index of the chunk in data, or -1
	data      []byte
	closed    bool
}

// Read implements io.Reader.
func (r *FileReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("storage: read of closed file")
	}
	if r.offset >= r.Info.Size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && r.offset < r.Info.Size {
		index := r.offset / r.chunkSize
		if index != r.loaded {
			if err := r.load(index); err != nil {
				return n, err
			}
		}
		copied := copy(p[n:], r.data[r.offset-index*r.chunkSize:])
		n += copied
		r.offset += int64(copied)
	}
	return n, nil
}

// load fetches one chunk by its _id: the one query FerretDB answers without scanning the
// collection (see chunkID).
func (r *FileReader) load(index int64) error {
	var chunk struct {
		FilesID string `bson:"files_id"`
		N       int64  `bson:"n"`
		Data    []byte `bson:"data"`
	}
	err := r.chunks.FindOne(r.ctx, bson.D{{Key: "_id", Value: chunkID(r.Info.ID, index)}}).Decode(&chunk)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("storage: read file %s: chunk %d missing: %w (%w)", r.Info.ID, index, ErrIncompleteFile, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("storage: read file %s: %w", r.Info.ID, err)
	}
	want := min(r.chunkSize, r.Info.Size-index*r.chunkSize)
	if chunk.FilesID != r.Info.ID || chunk.N != index || int64(len(chunk.Data)) != want {
		return fmt.Errorf("storage: read file %s: chunk %d is not the expected chunk: %w (%w)", r.Info.ID, index, ErrIncompleteFile, ErrNotFound)
	}
	r.loaded, r.data = index, chunk.Data
	return nil
}

// Seek implements io.Seeker. Seeking costs nothing until the next Read.
func (r *FileReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.offset + offset
	case io.SeekEnd:
		abs = r.Info.Size + offset
	default:
		return 0, errors.New("storage: seek: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("storage: seek: negative position")
	}
	r.offset = abs
	return abs, nil
}

// Close ends reading; the reader holds no database resources between reads.
func (r *FileReader) Close() error {
	r.closed = true
	r.data = nil
	return nil
}
