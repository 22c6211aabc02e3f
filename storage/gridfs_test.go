package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func smallPNG(t testing.TB) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 16, 8))
	for x := range 16 {
		img.Set(x, x/2, color.RGBA{R: 200, A: 255})
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFilesRoundTrip(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		owner := FileOwner{Session: "sess-1", Kernel: "kern-1"}
		w, dir, snap := watch(t, s.Files(), owner)

		pngData := smallPNG(t)
		csvData := []byte("name,value\nα,1\nβ,2\n")
		big := randomBytes(3*fileChunkSize+1234, 1) // several chunks, last one partial
		writeFile(t, filepath.Join(dir, "plot.png"), pngData)
		writeFile(t, filepath.Join(dir, "table.csv"), csvData)
		writeFile(t, filepath.Join(dir, "out", "big.bin"), big)
		writeFile(t, filepath.Join(dir, "empty.txt"), nil)

		report, err := w.UploadChanged(ctx, snap, "PERMALINK123")
		if err != nil {
			t.Fatalf("UploadChanged: %v", err)
		}
		want := []struct {
			name, contentType string
			data              []byte
		}{
			{"empty.txt", "text/plain; charset=utf-8", nil},
			{"out/big.bin", "application/octet-stream", big},
			{"plot.png", "image/png", pngData},
			{"table.csv", "text/csv; charset=utf-8", csvData},
		}
		if len(report.Files) != len(want) || report.Omitted != 0 || report.Truncated {
			t.Fatalf("report = %+v, want %d files", report, len(want))
		}
		for i, wf := range want {
			got := report.Files[i]
			sum := sha256.Sum256(wf.data)
			if got.Name != wf.name || got.Skipped != "" || got.Size != int64(len(wf.data)) ||
				got.ContentType != wf.contentType || got.SHA256 != hex.EncodeToString(sum[:]) || len(got.ID) != 22 {
				t.Errorf("file %d = %+v, want %s (%s, %d bytes)", i, got, wf.name, wf.contentType, len(wf.data))
				continue
			}
			r, err := s.Files().OpenFile(ctx, got.ID, got.Name)
			if err != nil {
				t.Fatalf("OpenFile(%s): %v", got.Name, err)
			}
			if data := readAll(t, r); !bytes.Equal(data, wf.data) {
				t.Errorf("%s: read back %d bytes, differing from the %d written", got.Name, len(data), len(wf.data))
			}
			info := r.Info
			if info.Size != int64(len(wf.data)) || info.ContentType != wf.contentType || info.SHA256 != got.SHA256 ||
				info.Session != owner.Session || info.Kernel != owner.Kernel || info.Permalink != "PERMALINK123" || info.UploadDate.IsZero() {
				t.Errorf("%s: info = %+v", got.Name, info)
			}
			_ = r.Close()

			// Any GridFS client reads the same bytes.
			var viaDriver bytes.Buffer
			if _, err := s.db.GridFSBucket(optionsBucket()).DownloadToStream(ctx, got.ID, &viaDriver); err != nil {
				t.Errorf("%s: driver GridFS download: %v", got.Name, err)
			} else if !bytes.Equal(viaDriver.Bytes(), wf.data) {
				t.Errorf("%s: driver GridFS download differs", got.Name)
			}
		}

		bigID := report.Files[1].ID
		t.Run("seek", func(t *testing.T) {
			r, err := s.Files().OpenFile(ctx, bigID, "")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			ranges := []struct{ off, n int64 }{
				{0, 10}, {fileChunkSize - 5, 10}, {2*fileChunkSize + 7, 100}, {int64(len(big)) - 3, 3},
				{5, 3 * fileChunkSize}, {fileChunkSize, fileChunkSize}, {0, int64(len(big))},
			}
			for _, rg := range ranges {
				if _, err := r.Seek(rg.off, io.SeekStart); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, rg.n)
				if _, err := io.ReadFull(r, buf); err != nil {
					t.Fatalf("range %d+%d: %v", rg.off, rg.n, err)
				}
				if !bytes.Equal(buf, big[rg.off:rg.off+rg.n]) {
					t.Errorf("range %d+%d differs", rg.off, rg.n)
				}
			}
			if end, err := r.Seek(0, io.SeekEnd); err != nil || end != int64(len(big)) {
				t.Errorf("Seek(end) = %d, %v", end, err)
			}
			if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Errorf("Read at end = %d, %v", n, err)
			}
			if _, err := r.Seek(-1, io.SeekStart); err == nil {
				t.Error("negative seek accepted")
			}
		})

		t.Run("lookups", func(t *testing.T) {
			tests := []struct{ id, name string }{
				{bigID, "plot.png"},            // wrong name for the id
				{bigID, "../out/big.bin"},      // escapes
				{bigID, "/out/big.bin"},        // absolute
				{bigID, "out//big.bin"},        // empty component
				{bigID, "out/./big.bin"},       // dot component
				{"AAAAAAAAAAAAAAAAAAAAAA", ""}, // unknown id
				{"../../etc/passwd", ""},       // not an id
			}
			for _, tc := range tests {
				if _, err := s.Files().OpenFile(ctx, tc.id, tc.name); !errors.Is(err, ErrNotFound) {
					t.Errorf("OpenFile(%q, %q) = %v, want ErrNotFound", tc.id, tc.name, err)
				}
			}
		})

		t.Run("only changes are uploaded again", func(t *testing.T) {
			snap2, err := w.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			report, err := w.UploadChanged(ctx, snap2, "")
			if err != nil || len(report.Files) != 0 {
				t.Fatalf("nothing changed, got %+v, %v", report, err)
			}
			writeFile(t, filepath.Join(dir, "table.csv"), []byte("name,value\nγ,3\n"))
			report, err = w.UploadChanged(ctx, snap2, "")
			if err != nil || len(report.Files) != 1 || report.Files[0].Name != "table.csv" || report.Files[0].Skipped != "" {
				t.Fatalf("one file changed, got %+v, %v", report, err)
			}
			// The earlier version is still served under its own id.
			r, err := s.Files().OpenFile(ctx, want3ID(t, s, "table.csv", report.Files[0].ID), "table.csv")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if data := readAll(t, r); !bytes.Equal(data, csvData) {
				t.Errorf("old version = %q", data)
			}
		})
	})
}

// want3ID finds the id of the other stored version of name.
func want3ID(t *testing.T, s *Store, name, notID string) string {
	t.Helper()
	var doc struct {
		ID string `bson:"_id"`
	}
	err := s.Files().filesColl.FindOne(context.Background(),
		bson.D{{Key: "filename", Value: name}, {Key: "_id", Value: bson.D{{Key: "$ne", Value: notID}}}}).Decode(&doc)
	if err != nil {
		t.Fatal(err)
	}
	return doc.ID
}

func optionsBucket() *options.BucketOptionsBuilder {
	return options.GridFSBucket().SetName(filesBucket)
}

// TestFilesSwappedUnderfoot covers races a kernel can run between our scan and our open: the file
// replaced by a symlink, a FIFO, a directory, another file, or grown over the limit.
func TestFilesSwappedUnderfoot(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		outside := filepath.Join(t.TempDir(), "secret")
		writeFile(t, outside, []byte("secret"))
		tests := []struct {
			name string
			swap func(t *testing.T, path string)
			want string
		}{
			{"symlink", func(t *testing.T, p string) { must(t, os.Remove(p)); must(t, os.Symlink(outside, p)) }, "symbolic link"},
			{"fifo", func(t *testing.T, p string) { must(t, os.Remove(p)); must(t, syscall.Mkfifo(p, 0o644)) }, "other than a regular file"},
			{"directory", func(t *testing.T, p string) { must(t, os.Remove(p)); must(t, os.Mkdir(p, 0o755)) }, "other than a regular file"},
			{"another file", func(t *testing.T, p string) {
				must(t, os.Rename(p, p+".old"))
				writeFile(t, p, []byte("small"))
			}, "replaced while being read"},
			{"grown", func(t *testing.T, p string) { writeFile(t, p, make([]byte, 2000)) }, "larger than"},
			{"removed", func(t *testing.T, p string) { must(t, os.Remove(p)) }, "removed"},
			{"parent swapped for a symlink", func(t *testing.T, p string) {
				parent := filepath.Dir(p)
				must(t, os.Rename(parent, parent+".old"))
				must(t, os.Symlink(filepath.Dir(outside), parent))
			}, "directory changed"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				files := newFiles(s.db, FileLimits{MaxFileBytes: 1000}, testLogger(t))
				w, dir, _ := watch(t, files, FileOwner{})
				path := filepath.Join(dir, "sub", "secret")
				writeFile(t, path, []byte("small"))
				after, err := scanTree(w.rootFD, files.limits)
				if err != nil {
					t.Fatal(err)
				}
				stamp, ok := after.entries["sub/secret"]
				if !ok {
					t.Fatalf("scan missed the file: %v", after.entries)
				}
				tc.swap(t, path)
				_, reason, err := files.uploadOne(ctx, w.rootFD, "sub/secret", stamp, FileOwner{}, "", 0)
				if err != nil || !strings.Contains(reason, tc.want) {
					t.Errorf("uploadOne = %q, %v; want a skip for %q", reason, err, tc.want)
				}
			})
		}
	})
}

func TestValidFileName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"plot.png", true},
		{"out/data 1.csv", true},
		{"é/ü.txt", true},
		{"", false},
		{"..", false},
		{"../x", false},
		{"a/../b", false},
		{"./a", false},
		{"/etc/passwd", false},
		{"a//b", false},
		{"a/", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"a\u202eb", false},
		{"\xff", false},
		{strings.Repeat("a", 256), false},
		{longName(maxNameBytes), true},
		{longName(maxNameBytes + 1), false},
	}
	for _, tc := range tests {
		if got := ValidFileName(tc.name); got != tc.want {
			t.Errorf("ValidFileName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func FuzzValidFileName(f *testing.F) {
	for _, s := range []string{"plot.png", "a/b", "../x", "/x", "a//b", "a/./b", "\xff", "a\u202eb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !ValidFileName(name) {
			return
		}
		if filepath.IsAbs(name) || filepath.Clean(name) != name || strings.HasPrefix(name, "../") || name == ".." ||
			strings.ContainsAny(name, "\x00\n\r") || printableName(name) != name {
			t.Errorf("ValidFileName accepted %q", name)
		}
		if !filepath.IsLocal(name) {
			t.Errorf("ValidFileName accepted non-local %q", name)
		}
	})
}

// TestOpenIncompleteFile: a files document whose chunks are not all there (as an upload cleaned
// up after its files document landed would leave) is not served: OpenFile says so before any
// header could be sent, as not found.
func TestOpenIncompleteFile(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		w, dir, snap := watch(t, s.Files(), FileOwner{})
		writeFile(t, filepath.Join(dir, "three-chunks.bin"), randomBytes(2*fileChunkSize+7, 5))
		writeFile(t, filepath.Join(dir, "one-chunk.txt"), []byte("short"))
		report, err := w.UploadChanged(ctx, snap, "")
		if err != nil || len(report.Files) != 2 {
			t.Fatalf("UploadChanged = %+v, %v", report, err)
		}
		short, long := report.Files[0], report.Files[1]
		chunks := s.Files().chunksColl
		for _, c := range []struct {
			file UploadedFile
			n    int64
		}{{long, 2}, {short, 0}} {
			if _, err := chunks.DeleteOne(ctx, bson.D{{Key: "_id", Value: chunkID(c.file.ID, c.n)}}); err != nil {
				t.Fatal(err)
			}
			_, err := s.Files().OpenFile(ctx, c.file.ID, c.file.Name)
			if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrIncompleteFile) {
				t.Errorf("OpenFile(%s) without its last chunk = %v, want ErrIncompleteFile and ErrNotFound", c.file.Name, err)
			}
		}
	})
}

// TestSweepOrphans plays uploads abandoned in each state a crash or a failed cleanup can leave,
// and checks that the sweep removes exactly what no reader should see, and only once it is old.
func TestSweepOrphans(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		f := s.Files()
		old := time.Now().Add(-2 * orphanAge).UTC().Truncate(time.Millisecond)
		plant := func(marker uploadMarker, chunks int, withFile bool) {
			t.Helper()
			if _, err := f.uploadsColl.InsertOne(ctx, marker); err != nil {
				t.Fatal(err)
			}
			for n := range chunks {
				doc := bson.D{{Key: "_id", Value: chunkID(marker.ID, int64(n))}, {Key: "files_id", Value: marker.ID},
					{Key: "n", Value: int32(n)}, {Key: "data", Value: bson.Binary{Data: []byte("x")}}}
				if _, err := f.chunksColl.InsertOne(ctx, doc); err != nil {
					t.Fatal(err)
				}
			}
			if withFile {
				doc := fileDoc{ID: marker.ID, Length: int64(chunks), ChunkSize: 1, UploadDate: old, Filename: "f.txt"}
				if _, err := f.filesColl.InsertOne(ctx, doc); err != nil {
					t.Fatal(err)
				}
			}
		}
		crashed := uploadMarker{ID: newFileID(), Started: old, MaxChunks: 5}                // died mid-upload
		committed := uploadMarker{ID: newFileID(), Started: old, MaxChunks: 5}              // marker removal failed
		aborted := uploadMarker{ID: newFileID(), Started: old, MaxChunks: 5, Aborted: true} // cleanup failed
		recent := uploadMarker{ID: newFileID(), Started: time.Now().UTC(), MaxChunks: 5}    // may be in progress
		plant(crashed, 3, false)
		plant(committed, 2, true)
		plant(aborted, 2, true)
		plant(recent, 2, false)

		swept, err := f.SweepOrphans(ctx)
		if err != nil || swept != 2 {
			t.Fatalf("SweepOrphans = %d, %v; want the crashed and the aborted upload", swept, err)
		}
		for _, tc := range []struct {
			name                  string
			id                    string
			chunks, files, marker int64
		}{
			{"crashed", crashed.ID, 0, 0, 0},
			{"committed", committed.ID, 2, 1, 0},
			{"aborted", aborted.ID, 0, 0, 0},
			{"recent", recent.ID, 2, 0, 1},
		} {
			byFile := bson.D{{Key: "files_id", Value: tc.id}}
			byID := bson.D{{Key: "_id", Value: tc.id}}
			if got := [3]int64{countDocs(t, s, filesBucket+".chunks", byFile), countDocs(t, s, filesBucket+".files", byID), countDocs(t, s, uploadsCollection, byID)}; got != [3]int64{tc.chunks, tc.files, tc.marker} {
				t.Errorf("%s upload: %d chunks, %d files documents, %d markers left; want %d, %d, %d", tc.name, got[0], got[1], got[2], tc.chunks, tc.files, tc.marker)
			}
		}
		if r, err := f.OpenFile(ctx, committed.ID, ""); err != nil {
			t.Errorf("the committed file is no longer readable: %v", err)
		} else {
			_ = r.Close()
		}
		if swept, err := f.SweepOrphans(ctx); err != nil || swept != 0 {
			t.Errorf("second SweepOrphans = %d, %v", swept, err)
		}
	})
}
