package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// These tests put a faultProxy between the driver and the embedded database to stall a write,
// or lose its reply, at a chosen point. (They need the database's own socket, so they do not run
// against CELLGATE_TEST_MONGO_URI.)

// deadlockGuard is how long a test waits for something that, when the code is right, happens at
// once; it only keeps a regression from hanging the test run, and is never what a test asserts.
const deadlockGuard = 60 * time.Second

// proxiedStore opens a store on a fresh embedded database, through a faultProxy. Its Files
// (and those of faultFiles) let a failed upload's cleanup take as long as it needs, so that
// checking that it happened does not depend on the speed of the machine.
func proxiedStore(t *testing.T) (*Store, *faultProxy) {
	slow(t)
	t.Helper()
	e := startEmbedded(t, t.TempDir())
	p := startFaultProxy(t, e)
	s := openStore(t, Config{URI: p.URI()})
	s.files.cleanupTimeout = deadlockGuard
	return s, p
}

func faultFiles(t *testing.T, s *Store, limits FileLimits) *Files {
	f := newFiles(s.db, limits, testLogger(t))
	f.cleanupTimeout = deadlockGuard
	return f
}

// countDocs counts the documents of a collection matching filter.
func countDocs(t *testing.T, s *Store, coll string, filter bson.D) int64 {
	t.Helper()
	n, err := s.db.Collection(coll).CountDocuments(context.Background(), filter)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// assertNothingStored checks that no file of session is stored, and that no chunk lacks its
// files document.
func assertNothingStored(t *testing.T, s *Store, files *Files, session string) {
	t.Helper()
	if n := countDocs(t, s, filesBucket+".files", bson.D{{Key: "metadata.session", Value: session}}); n != 0 {
		t.Errorf("%d files documents stored for the session, want none", n)
	}
	orphans := bson.D{{Key: "files_id", Value: bson.D{{Key: "$nin", Value: storedIDs(t, files)}}}}
	if n := countDocs(t, s, filesBucket+".chunks", orphans); n != 0 {
		t.Errorf("%d orphan chunks", n)
	}
}

// uploadStalled runs UploadChanged, does during while the write carrying stall's marker is
// held, releases it, and returns the report.
func uploadStalled(t *testing.T, w *Watcher, snap Snapshot, stall *faultRule, during func()) UploadReport {
	t.Helper()
	type result struct {
		report UploadReport
		err    error
	}
	done := make(chan result, 1)
	go func() {
		report, err := w.UploadChanged(context.Background(), snap, "")
		done <- result{report, err}
	}()
	<-stall.fired
	during()
	stall.Release()
	res := <-done
	if res.err != nil {
		t.Fatalf("UploadChanged: %v", res.err)
	}
	return res.report
}

func appendFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.Write(data)
	must(t, errors.Join(err, f.Close()))
}

// TestFilesDocumentReplyLost: the server stores the files document but its reply never arrives,
// as when a write times out after being applied. The upload fails, and must not leave behind a
// files document whose chunks it then deletes (served as 200 and then "chunk missing").
func TestFilesDocumentReplyLost(t *testing.T) {
	s, proxy := proxiedStore(t)
	ctx := context.Background()
	session := "lost-" + randomHex(4)
	w, dir, snap := watch(t, s.Files(), FileOwner{Session: session})
	name := "reply-lost-" + randomHex(8) + ".bin" // in the files document only
	writeFile(t, filepath.Join(dir, name), randomBytes(2*fileChunkSize+10, 3))
	lost := proxy.on([]byte(name), dropReply)

	report, err := w.UploadChanged(ctx, snap, "")
	select {
	case <-lost.fired:
	default:
		t.Fatal("the files document was never written")
	}
	if err == nil {
		t.Fatalf("UploadChanged succeeded though the files document's reply was lost: %+v", report)
	}
	if len(report.Files) != 1 || !strings.Contains(report.Files[0].Skipped, "storage unavailable") {
		t.Errorf("report = %+v", report)
	}
	assertNothingStored(t, s, s.Files(), session)

	// The upload stays marked (its insert was in doubt) until the sweep has looked again.
	swept, err := s.Files().sweepOrphans(ctx, time.Now().Add(time.Minute))
	if err != nil || swept != 1 {
		t.Errorf("sweep = %d, %v; want the one failed upload", swept, err)
	}
	if n := countDocs(t, s, uploadsCollection, bson.D{}); n != 0 {
		t.Errorf("%d upload markers left after the sweep", n)
	}
	assertNothingStored(t, s, s.Files(), session)
}

// TestUploadDeadline: an upload whose database write stalls ends with its context (the gateway's
// UploadTimeout), reports the file as not uploaded, and what the stalled write stores when it
// finally lands is swept.
func TestUploadDeadline(t *testing.T) {
	s, proxy := proxiedStore(t)
	session := "deadline-" + randomHex(4)
	w, dir, snap := watch(t, s.Files(), FileOwner{Session: session})
	content := []byte("never in time " + randomHex(16))
	writeFile(t, filepath.Join(dir, "slow.txt"), content)
	stall := proxy.on(content, holdRequest)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	report, err := w.UploadChanged(ctx, snap, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("UploadChanged = %v, want the deadline", err)
	}
	if len(report.Files) != 1 || !strings.Contains(report.Files[0].Skipped, "storage unavailable") {
		t.Errorf("report = %+v", report)
	}
	stall.Release()
	<-stall.replied // the stalled chunk write has now landed, after the upload gave up
	swept, err := s.Files().sweepOrphans(context.Background(), time.Now().Add(time.Minute))
	if err != nil || swept != 1 {
		t.Errorf("sweep = %d, %v; want the abandoned upload", swept, err)
	}
	assertNothingStored(t, s, s.Files(), session)
}

// TestFilesTornRead changes a file between two batches of its chunks (the upload stalled after
// reading the first batch), so that a naive upload would store the first part of one version
// and the rest of another. The upload must see it, and store nothing; once the file is left
// alone it is stored, byte for byte the version on disk.
func TestFilesTornRead(t *testing.T) {
	const size = fileChunkBatch*fileChunkSize + 300*1024 // two batches
	s, proxy := proxiedStore(t)
	tests := []struct {
		name   string
		change func(t *testing.T, path string, v1 []byte) []byte // returns the new content
	}{
		{"overwritten in place, mtime restored", func(t *testing.T, path string, v1 []byte) []byte {
			fi, err := os.Stat(path)
			must(t, err)
			v2 := randomBytes(len(v1), 2)
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt(v2, 0)
			must(t, errors.Join(err, f.Close()))
			must(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
			return v2
		}},
		{"tail rewritten", func(t *testing.T, path string, v1 []byte) []byte {
			v2 := bytes.Clone(v1)
			copy(v2[len(v2)-1000:], bytes.Repeat([]byte{'!'}, 1000))
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			must(t, err)
			_, err = f.WriteAt(v2[len(v2)-1000:], int64(len(v2)-1000))
			must(t, errors.Join(err, f.Close()))
			return v2
		}},
		{"appended to", func(t *testing.T, path string, v1 []byte) []byte {
			appendFile(t, path, []byte("more"))
			return append(bytes.Clone(v1), "more"...)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			session := "torn-" + randomHex(4)
			files := faultFiles(t, s, FileLimits{MaxFileBytes: 8 << 20})
			w, dir, snap := watch(t, files, FileOwner{Session: session})
			path := filepath.Join(dir, "data.bin")
			v1 := randomBytes(size, 1)
			copy(v1, "torn "+randomHex(16)) // marks the first batch
			writeFile(t, path, v1)
			stall := proxy.on(v1[:37], holdRequest)

			// While the first batch is on its way, and the second not read yet:
			var v2 []byte
			report := uploadStalled(t, w, snap, stall, func() { v2 = tc.change(t, path, v1) })

			if len(report.Files) != 1 {
				t.Fatalf("report = %+v", report)
			}
			if f := report.Files[0]; f.Skipped == "" {
				r, err := files.OpenFile(ctx, f.ID, f.Name)
				must(t, err)
				got := readAll(t, r)
				_ = r.Close()
				t.Fatalf("a file changed while being read was stored (%d bytes; equal to the old version %v, the new %v)",
					len(got), bytes.Equal(got, v1), bytes.Equal(got, v2))
			} else if !strings.Contains(f.Skipped, "changed while being read") {
				t.Errorf("skipped as %q, want \"changed while being read\"", f.Skipped)
			}
			assertNothingStored(t, s, files, session)
			if n := countDocs(t, s, uploadsCollection, bson.D{}); n != 0 {
				t.Errorf("%d upload markers left", n)
			}

			// Left alone, the file is stored as it now is.
			report, err := w.UploadChanged(ctx, snap, "")
			if err != nil || len(report.Files) != 1 || report.Files[0].Skipped != "" {
				t.Fatalf("second UploadChanged = %+v, %v", report, err)
			}
			r, err := files.OpenFile(ctx, report.Files[0].ID, "data.bin")
			must(t, err)
			defer r.Close()
			if got := readAll(t, r); !bytes.Equal(got, v2) {
				t.Errorf("stored %d bytes, not the %d bytes of the file", len(got), len(v2))
			}
		})
	}
}

// TestFilesGrewBeyondLimitWhileRead grows a file past the size limit between two batches of its
// chunks.
func TestFilesGrewBeyondLimitWhileRead(t *testing.T) {
	const limit = 5 << 20
	s, proxy := proxiedStore(t)
	session := "grew-" + randomHex(4)
	files := faultFiles(t, s, FileLimits{MaxFileBytes: limit})
	w, dir, snap := watch(t, files, FileOwner{Session: session})
	path := filepath.Join(dir, "growing.log")
	data := randomBytes(limit-(512<<10), 4) // under the limit, more than one batch
	copy(data, "grows "+randomHex(16))
	writeFile(t, path, data)
	stall := proxy.on(data[:38], holdRequest)

	report := uploadStalled(t, w, snap, stall, func() { appendFile(t, path, make([]byte, 1<<20)) })
	if len(report.Files) != 1 || !strings.Contains(report.Files[0].Skipped, "grew beyond the 5242880-byte file limit while being read") {
		t.Fatalf("report = %+v", report)
	}
	assertNothingStored(t, s, files, session)
	if n := countDocs(t, s, uploadsCollection, bson.D{}); n != 0 {
		t.Errorf("%d upload markers left", n)
	}
}
