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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// FileLimits bound what a kernel can push into storage. Zero fields take the defaults given.
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
	// IncludeHidden also uploads names starting with "." and __pycache__ directories, which are
	// otherwise ignored silently: they are the caches and settings of the kernel's libraries.
	IncludeHidden bool
}

func (l FileLimits) withDefaults() FileLimits {
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = 10 << 20
	}
	if l.MaxFilesPerExecution <= 0 {
		l.MaxFilesPerExecution = 50
	}
	if l.MaxSessionBytes <= 0 {
		l.MaxSessionBytes = 100 << 20
	}
	switch {
	case l.MaxDepth == 0:
		l.MaxDepth = 3
	case l.MaxDepth < 0:
		l.MaxDepth = 0
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = 10000
	}
	return l
}

const (
	// fileChunkSize is GridFS's default; chunks are written in batches of fileChunkBatch.
	fileChunkSize  = 255 * 1024
	fileChunkBatch = 16
	// maxSkipNotices bounds the skipped entries listed one by one in an UploadReport.
	maxSkipNotices = 50
	maxNameBytes   = 1024
)

// Files stores files written by kernels in a GridFS bucket ("files.files", "files.chunks"), in
// the GridFS layout, so any GridFS client can read them.
//
// It writes the chunks itself rather than through the driver's upload stream, which allocates a
// 16 MiB buffer per file and whose bucket is not safe for concurrent use; the files document is
// inserted last, so a file is either complete or invisible (an upload cut short leaves at most
// orphan chunks, which no reader can reach).
type Files struct {
	filesColl  *mongo.Collection
	chunksColl *mongo.Collection
	limits     FileLimits
	log        zerolog.Logger
	buffers    sync.Pool // *[]byte of fileChunkSize*fileChunkBatch
}

func newFiles(db *mongo.Database, limits FileLimits, log zerolog.Logger) *Files {
	f := &Files{
		filesColl:  db.Collection(filesBucket + ".files"),
		chunksColl: db.Collection(filesBucket + ".chunks"),
		limits:     limits.withDefaults(),
		log:        log,
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
}

// Watcher finds and uploads the files a kernel writes in its working directory. It holds the
// directory open; Close it when the session ends. Files uploaded stay after that.
type Watcher struct {
	files *Files
	owner FileOwner

	mu           sync.Mutex // one scan or upload at a time
	rootFD       int
	closed       bool
	sessionBytes int64
}

// Watch opens dir, a kernel's working directory, for Snapshot and UploadChanged.
func (f *Files) Watch(dir string, owner FileOwner) (*Watcher, error) {
	fd, err := openRoot(dir)
	if err != nil {
		return nil, err
	}
	return &Watcher{files: f, owner: owner, rootFD: fd}, nil
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
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return UploadReport{}, errors.New("storage: watcher closed")
	}
	limits := w.files.limits
	after, err := scanTree(w.rootFD, limits)
	if err != nil {
		return UploadReport{}, err
	}

	report := UploadReport{Truncated: after.truncated}
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
		case w.sessionBytes+stamp.size > limits.MaxSessionBytes:
			skip(rel, fmt.Sprintf("session storage limit of %d bytes reached", limits.MaxSessionBytes))
		default:
			file, reason, err := w.uploadOne(ctx, rel, stamp, permalink)
			switch {
			case err != nil:
				storeErr = err
				skip(rel, "not uploaded: storage unavailable")
			case reason != "":
				skip(rel, reason)
			default:
				uploaded++
				w.sessionBytes += file.Size
				report.Files = append(report.Files, file)
			}
		}
	}
	if storeErr != nil {
		return report, fmt.Errorf("storage: upload files: %w", storeErr)
	}
	return report, nil
}

type fileMeta struct {
	Session     string `bson:"session"`
	Kernel      string `bson:"kernel"`
	Permalink   string `bson:"permalink"`
	Name        string `bson:"name"`
	Size        int64  `bson:"size"`
	SHA256      string `bson:"sha256"`
	ContentType string `bson:"contentType"`
}

// fileDoc is a GridFS files document.
type fileDoc struct {
	ID         string    `bson:"_id"`
	Length     int64     `bson:"length"`
	ChunkSize  int32     `bson:"chunkSize"`
	UploadDate time.Time `bson:"uploadDate"`
	Filename   string    `bson:"filename"`
	Metadata   fileMeta  `bson:"metadata"`
}

// uploadOne stores one file. A non-empty reason means it was skipped (and nothing is left
// stored); an error means the database failed.
func (w *Watcher) uploadOne(ctx context.Context, rel string, want entryStamp, permalink string) (UploadedFile, string, error) {
	limits := w.files.limits
	file, opened, reason := openRegularInTree(w.rootFD, rel, want)
	if reason != "" {
		return UploadedFile{}, reason, nil
	}
	defer file.Close()
	if opened.size > limits.MaxFileBytes {
		return UploadedFile{}, fmt.Sprintf("larger than the %d-byte file limit", limits.MaxFileBytes), nil
	}

	id := newFileID()
	up := chunkUploader{files: w.files, id: id, hash: sha256.New()}
	defer func() {
		if !up.committed {
			up.abort(ctx)
		}
	}()

	// Read at most one byte more than allowed: a file growing while it is read is caught without
	// reading all of it.
	src := io.LimitReader(file, limits.MaxFileBytes+1)
	bufp := w.files.buffers.Get().(*[]byte)
	defer w.files.buffers.Put(bufp)
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
	if w.sessionBytes+up.size > limits.MaxSessionBytes {
		return UploadedFile{}, fmt.Sprintf("session storage limit of %d bytes reached", limits.MaxSessionBytes), nil
	}

	result := UploadedFile{
		Name:        rel,
		ID:          id,
		Size:        up.size,
		ContentType: detectContentType(rel, up.head),
		SHA256:      hex.EncodeToString(up.hash.Sum(nil)),
	}
	doc := fileDoc{
		ID:         id,
		Length:     up.size,
		ChunkSize:  fileChunkSize,
		UploadDate: time.Now().UTC().Truncate(time.Millisecond),
		Filename:   rel,
		Metadata: fileMeta{
			Session:     w.owner.Session,
			Kernel:      w.owner.Kernel,
			Permalink:   permalink,
			Name:        rel,
			Size:        up.size,
			SHA256:      result.SHA256,
			ContentType: result.ContentType,
		},
	}
	if _, err := w.files.filesColl.InsertOne(ctx, doc); err != nil {
		return UploadedFile{}, "", fmt.Errorf("storage: store file %s: %w", rel, err)
	}
	up.committed = true
	return result, "", nil
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
	hash      hash.Hash
	head      []byte // first bytes, for content type detection
	size      int64
	next      int32 // next chunk index
	wrote     bool
	committed bool
}

func (u *chunkUploader) write(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
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
	u.wrote = true // even a failed InsertMany may have stored some
	if _, err := u.files.chunksColl.InsertMany(ctx, docs); err != nil {
		return fmt.Errorf("storage: store file chunks: %w", err)
	}
	return nil
}

// abort removes the chunks of an upload that will not be committed, one by one by _id (see
// chunkID: a delete by files_id would scan the whole chunks collection on FerretDB).
func (u *chunkUploader) abort(ctx context.Context) {
	if !u.wrote {
		return
	}
	// Clean up even when ctx was what ended the upload.
	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for n := range int64(u.next) {
		if _, err := u.files.chunksColl.DeleteOne(cleanupCtx, bson.D{{Key: "_id", Value: chunkID(u.id, n)}}); err != nil {
			u.files.log.Warn().Err(err).Str("file_id", u.id).Msg("could not remove chunks of an aborted upload")
			return
		}
	}
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
	return &FileReader{
		Info:      doc.info(),
		ctx:       ctx,
		chunks:    f.chunksColl,
		chunkSize: int64(doc.ChunkSize),
		loaded:    -1,
	}, nil
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
		return fmt.Errorf("storage: read file %s: chunk %d missing", r.Info.ID, index)
	}
	if err != nil {
		return fmt.Errorf("storage: read file %s: %w", r.Info.ID, err)
	}
	want := min(r.chunkSize, r.Info.Size-index*r.chunkSize)
	if chunk.FilesID != r.Info.ID || chunk.N != index || int64(len(chunk.Data)) != want {
		return fmt.Errorf("storage: read file %s: chunk %d is not the expected chunk", r.Info.ID, index)
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
