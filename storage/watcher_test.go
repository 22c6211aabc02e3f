package storage

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestFilesHostileDirectory plays an untrusted kernel: each case creates entries after the
// snapshot, and checks what is uploaded and what is skipped, and that nothing skipped is stored.
func TestFilesHostileDirectory(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		outside := t.TempDir()
		writeFile(t, filepath.Join(outside, "secret.txt"), []byte("top secret"))
		writeFile(t, filepath.Join(outside, "sub", "inner.txt"), []byte("also secret"))

		type expect struct {
			name    string
			skipped string // substring of the reason; empty: uploaded
		}
		tests := []struct {
			name      string
			limits    FileLimits
			make      func(t *testing.T, dir string)
			want      []expect
			omitted   int
			truncated bool
		}{
			{
				name: "symlink to a file outside",
				make: func(t *testing.T, dir string) {
					must(t, os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "link.txt")))
				},
				want: []expect{{"link.txt", "symbolic link"}},
			},
			{
				name: "symlink to a directory outside",
				make: func(t *testing.T, dir string) {
					must(t, os.Symlink(filepath.Join(outside, "sub"), filepath.Join(dir, "linkdir")))
				},
				want: []expect{{"linkdir", "symbolic link"}},
			},
			{
				name: "relative symlink escaping upwards",
				make: func(t *testing.T, dir string) {
					must(t, os.MkdirAll(filepath.Join(dir, "a"), 0o755))
					must(t, os.Symlink("../../../../../../etc/passwd", filepath.Join(dir, "a", "passwd")))
				},
				want: []expect{{"a/passwd", "symbolic link"}},
			},
			{
				name: "named pipe",
				make: func(t *testing.T, dir string) {
					must(t, syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644))
				},
				want: []expect{{"pipe", "named pipe"}},
			},
			{
				name: "unix socket",
				make: func(t *testing.T, dir string) {
					l, err := net.Listen("unix", filepath.Join(dir, "sock"))
					must(t, err)
					t.Cleanup(func() { _ = l.Close() })
				},
				want: []expect{{"sock", "socket"}},
			},
			{
				name: "character device",
				make: func(t *testing.T, dir string) {
					// Like /dev/null (1,3); needs CAP_MKNOD, which a sandboxed kernel lacks anyway.
					if err := syscall.Mknod(filepath.Join(dir, "null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
						t.Skipf("mknod: %v", err)
					}
				},
				want: []expect{{"null", "character device"}},
			},
			{
				name: "hard link to a file outside",
				make: func(t *testing.T, dir string) {
					if err := os.Link(filepath.Join(outside, "secret.txt"), filepath.Join(dir, "hard.txt")); err != nil {
						t.Skipf("link: %v", err)
					}
				},
				want: []expect{{"hard.txt", "hard links"}},
			},
			{
				name:   "file over the size limit",
				limits: FileLimits{MaxFileBytes: 1000},
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, "big.bin"), make([]byte, 1001))
					writeFile(t, filepath.Join(dir, "ok.bin"), make([]byte, 1000))
				},
				want: []expect{{"big.bin", "larger than the 1000-byte file limit"}, {"ok.bin", ""}},
			},
			{
				name:   "too many files in one execution",
				limits: FileLimits{MaxFilesPerExecution: 3},
				make: func(t *testing.T, dir string) {
					for i := range 5 {
						writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), []byte("x"))
					}
				},
				want: []expect{{"f0.txt", ""}, {"f1.txt", ""}, {"f2.txt", ""}, {"f3.txt", "more than 3 files"}, {"f4.txt", "more than 3 files"}},
			},
			{
				name:   "session total",
				limits: FileLimits{MaxSessionBytes: 1000},
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, "a.bin"), make([]byte, 600))
					writeFile(t, filepath.Join(dir, "b.bin"), make([]byte, 600))
					writeFile(t, filepath.Join(dir, "c.bin"), make([]byte, 400))
				},
				want: []expect{{"a.bin", ""}, {"b.bin", "session storage limit"}, {"c.bin", ""}},
			},
			{
				name: "names that are not text",
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, "new\nline.txt"), []byte("x"))
					writeFile(t, filepath.Join(dir, "bad\xff.txt"), []byte("x"))
					writeFile(t, filepath.Join(dir, "evil\u202etxt.exe"), []byte("x"))
					writeFile(t, filepath.Join(dir, "ok é.txt"), []byte("x"))
				},
				want: []expect{{"bad\uFFFD.txt", "not printable"}, {"evil\uFFFDtxt.exe", "not printable"}, {"new\uFFFDline.txt", "not printable"}, {"ok é.txt", ""}},
			},
			{
				name:   "directories too deep",
				limits: FileLimits{MaxDepth: 1},
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, "a", "one.txt"), []byte("1"))
					writeFile(t, filepath.Join(dir, "a", "b", "two.txt"), []byte("2"))
				},
				want: []expect{{"a/b/", "nested more than 1 levels"}, {"a/one.txt", ""}},
			},
			{
				name:   "paths too long",
				limits: FileLimits{MaxDepth: 10},
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, longName(maxNameBytes)), []byte("fits"))
					writeFile(t, filepath.Join(dir, longName(maxNameBytes+1)), []byte("one byte too long"))
				},
				want: []expect{{longName(maxNameBytes), ""}, {longName(maxNameBytes + 1), "path longer than 1024 bytes"}},
			},
			{
				name: "hidden files and caches are ignored",
				make: func(t *testing.T, dir string) {
					writeFile(t, filepath.Join(dir, ".ipython", "profile_default", "history.sqlite"), []byte("x"))
					writeFile(t, filepath.Join(dir, "__pycache__", "m.cpython-311.pyc"), []byte("x"))
					writeFile(t, filepath.Join(dir, ".hidden"), []byte("x"))
					writeFile(t, filepath.Join(dir, "visible.txt"), []byte("x"))
				},
				want: []expect{{"visible.txt", ""}},
			},
			{
				name:   "too many entries",
				limits: FileLimits{MaxEntries: 10, MaxFilesPerExecution: 100},
				make: func(t *testing.T, dir string) {
					for i := range 30 {
						writeFile(t, filepath.Join(dir, fmt.Sprintf("f%02d", i)), []byte("x"))
					}
				},
				truncated: true,
			},
			{
				name: "many skipped entries are summarised",
				make: func(t *testing.T, dir string) {
					for i := range maxSkipNotices + 7 {
						must(t, os.Symlink("/etc/passwd", filepath.Join(dir, fmt.Sprintf("l%03d", i))))
					}
				},
				omitted: 7,
			},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				files := newFiles(s.db, tc.limits, testLogger(t))
				session := "hostile-" + randomHex(4)
				w, dir, snap := watch(t, files, FileOwner{Session: session})
				tc.make(t, dir)
				report, err := w.UploadChanged(ctx, snap, "")
				if err != nil {
					t.Fatalf("UploadChanged: %v", err)
				}
				if report.Truncated != tc.truncated || report.Omitted != tc.omitted {
					t.Errorf("truncated %v, omitted %d; want %v, %d", report.Truncated, report.Omitted, tc.truncated, tc.omitted)
				}
				if tc.truncated {
					if n := len(report.Files); n != 10 {
						t.Errorf("%d files examined, want the 10 allowed", n)
					}
					return
				}
				if tc.omitted > 0 {
					if len(report.Files) != maxSkipNotices {
						t.Errorf("%d notices listed, want %d", len(report.Files), maxSkipNotices)
					}
					return
				}
				var got []expect
				var uploaded []string
				for _, f := range report.Files {
					got = append(got, expect{f.Name, f.Skipped})
					if f.Skipped == "" {
						uploaded = append(uploaded, f.Name)
					}
				}
				if len(got) != len(tc.want) {
					t.Fatalf("report %+v, want %+v", report.Files, tc.want)
				}
				for i := range got {
					if got[i].name != tc.want[i].name || (tc.want[i].skipped == "") != (got[i].skipped == "") ||
						!strings.Contains(got[i].skipped, tc.want[i].skipped) {
						t.Errorf("entry %d = %+q, want %+q", i, got[i], tc.want[i])
					}
				}
				// Exactly the uploaded files are stored, and none of the skipped ones.
				stored, err := files.filesColl.Distinct(ctx, "filename", bson.D{{Key: "metadata.session", Value: session}}).Raw()
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				must(t, bson.UnmarshalValue(bson.TypeArray, stored, &names))
				slices.Sort(names)
				if !slices.Equal(names, uploaded) {
					t.Errorf("stored %q, want %q", names, uploaded)
				}
				if n, err := files.chunksColl.CountDocuments(ctx, bson.D{{Key: "files_id", Value: bson.D{{Key: "$nin", Value: storedIDs(t, files)}}}}); err != nil || n != 0 {
					t.Errorf("%d orphan chunks (%v)", n, err)
				}
			})
		}
	})
}

// TestFilesDatabaseDown: uploads fail with an error and a complete report, never a panic.
func TestFilesDatabaseDown(t *testing.T) {
	ctx := context.Background()
	e := startEmbedded(t, t.TempDir())
	s := openStore(t, Config{URI: e.URI(), ServerSelectionTimeout: 200 * time.Millisecond})
	w, dir, snap := watch(t, s.Files(), FileOwner{})
	writeFile(t, filepath.Join(dir, "a.txt"), []byte("a"))
	writeFile(t, filepath.Join(dir, "b.txt"), []byte("b"))
	must(t, e.Close())
	report, err := w.UploadChanged(ctx, snap, "")
	if err == nil {
		t.Fatal("UploadChanged succeeded with the database down")
	}
	if len(report.Files) != 2 || !strings.Contains(report.Files[0].Skipped, "storage unavailable") ||
		!strings.Contains(report.Files[1].Skipped, "storage unavailable") {
		t.Errorf("report = %+v", report)
	}
}

// The report's After is the directory as the upload found it: measured
// against, it shows only what changed since, so callers need not scan again.
func TestUploadReportAfterIsTheNextBaseline(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		w, dir, snap := watch(t, s.Files(), FileOwner{Session: "sess-after", Kernel: "k"})
		writeFile(t, filepath.Join(dir, "first.txt"), []byte("1"))
		report, err := w.UploadChanged(ctx, snap, "")
		if err != nil || len(report.Files) != 1 || report.After == nil {
			t.Fatalf("first upload = %+v, %v", report, err)
		}
		writeFile(t, filepath.Join(dir, "second.txt"), []byte("2"))
		report, err = w.UploadChanged(ctx, *report.After, "")
		if err != nil || len(report.Files) != 1 || report.Files[0].Name != "second.txt" {
			t.Fatalf("measured from After, got %+v, %v; want second.txt alone", report, err)
		}
	})
}

// TestSnapshotDoesNotWaitForTheDatabase stalls an upload's chunk write and checks that Snapshot
// (and Close) of the same watcher still answer: they run on the client's send path.
func TestSnapshotDoesNotWaitForTheDatabase(t *testing.T) {
	s, proxy := proxiedStore(t)
	for _, call := range []string{"Snapshot", "Close"} {
		t.Run(call, func(t *testing.T) {
			w, dir, snap := watch(t, s.Files(), FileOwner{Session: "stall-" + randomHex(4)})
			content := []byte("stalled upload " + randomHex(16))
			writeFile(t, filepath.Join(dir, "out.txt"), content)
			stall := proxy.on(content, holdRequest)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				report UploadReport
				err    error
			}
			uploaded := make(chan result, 1)
			go func() {
				report, err := w.UploadChanged(ctx, snap, "")
				uploaded <- result{report, err}
			}()
			<-stall.fired // the upload is inside a database write, and stays there

			var gaveUp atomic.Bool
			guard := time.AfterFunc(deadlockGuard, func() { gaveUp.Store(true); cancel(); stall.Release() })
			var err error
			if call == "Snapshot" {
				_, err = w.Snapshot()
			} else {
				err = w.Close()
			}
			guard.Stop()
			if gaveUp.Load() {
				t.Fatalf("%s waited for the stalled database write", call)
			}
			if err != nil {
				t.Fatalf("%s: %v", call, err)
			}

			stall.Release()
			res := <-uploaded
			if res.err != nil || len(res.report.Files) != 1 || res.report.Files[0].Skipped != "" {
				t.Fatalf("UploadChanged after the stall = %+v, %v", res.report, res.err)
			}
			r, err := s.Files().OpenFile(context.Background(), res.report.Files[0].ID, "out.txt")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if got := readAll(t, r); !bytes.Equal(got, content) {
				t.Errorf("stored %q, want %q", got, content)
			}
		})
	}
}
