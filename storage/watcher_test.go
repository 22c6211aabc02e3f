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
	"sync"
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
	slow(t)
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

// uploadedNames lists the files a report says were uploaded, and fails the test on any skipped.
func uploadedNames(t *testing.T, report UploadReport) []string {
	t.Helper()
	var names []string
	for _, f := range report.Files {
		if f.Skipped != "" {
			t.Errorf("%s skipped: %s", f.Name, f.Skipped)
			continue
		}
		names = append(names, f.Name)
	}
	return names
}

// afterExecution runs AfterExecution for a key that must be tracked, and returns what it uploaded.
func afterExecution(t *testing.T, w *Watcher, key string) []string {
	t.Helper()
	report, ok, err := w.AfterExecution(context.Background(), key, "")
	if err != nil || !ok {
		t.Fatalf("AfterExecution(%s) = %+v, %v, %v", key, report, ok, err)
	}
	return uploadedNames(t, report)
}

func beforeExecution(t *testing.T, w *Watcher, key string) {
	t.Helper()
	if !w.BeforeExecution(key) {
		t.Fatalf("BeforeExecution(%s) kept no baseline", key)
	}
}

// TestWatcherExecutions covers the per-execution baselines: BeforeExecution, AfterExecution,
// Tracks, Forget and Latest.
func TestWatcherExecutions(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()

		// Executions queue in the kernel: the second and third are sent, and take their
		// snapshots, while the first still runs and writes. Neither uploads the first's files
		// again, although first-late.txt is not in their snapshots.
		t.Run("queued executions", func(t *testing.T) {
			w, dir, _ := watch(t, s.Files(), FileOwner{Session: "queued-" + randomHex(4)})
			beforeExecution(t, w, "first")
			writeFile(t, filepath.Join(dir, "first-early.txt"), []byte("1"))
			beforeExecution(t, w, "second")
			beforeExecution(t, w, "third")
			writeFile(t, filepath.Join(dir, "first-late.txt"), []byte("1"))
			if got, want := afterExecution(t, w, "first"), []string{"first-early.txt", "first-late.txt"}; !slices.Equal(got, want) {
				t.Errorf("first uploaded %q, want %q", got, want)
			}
			writeFile(t, filepath.Join(dir, "second.txt"), []byte("2"))
			if got, want := afterExecution(t, w, "second"), []string{"second.txt"}; !slices.Equal(got, want) {
				t.Errorf("second uploaded %q, want %q", got, want)
			}
			writeFile(t, filepath.Join(dir, "third.txt"), []byte("3"))
			writeFile(t, filepath.Join(dir, "first-early.txt"), []byte("rewritten"))
			if got, want := afterExecution(t, w, "third"), []string{"first-early.txt", "third.txt"}; !slices.Equal(got, want) {
				t.Errorf("third uploaded %q, want %q", got, want)
			}
		})

		t.Run("cap on tracked executions", func(t *testing.T) {
			files := newFiles(s.db, FileLimits{MaxTrackedExecutions: 2}, testLogger(t))
			w, dir, _ := watch(t, files, FileOwner{Session: "cap-" + randomHex(4)})
			beforeExecution(t, w, "1")
			beforeExecution(t, w, "2")
			if w.BeforeExecution("3") || w.Tracks("3") {
				t.Fatal("a third execution tracked beyond MaxTrackedExecutions 2")
			}
			writeFile(t, filepath.Join(dir, "out.txt"), []byte("x"))
			if report, ok, err := w.AfterExecution(ctx, "3", ""); ok || err != nil || len(report.Files) != 0 {
				t.Errorf("AfterExecution of the untracked third = %+v, %v, %v", report, ok, err)
			}
			if got, want := afterExecution(t, w, "1"), []string{"out.txt"}; !slices.Equal(got, want) {
				t.Errorf("uploaded %q, want %q", got, want)
			}
			// Only executions waiting count: there is room again.
			beforeExecution(t, w, "3")
			if !w.Tracks("2") || !w.Tracks("3") || w.Tracks("1") {
				t.Errorf("tracks 1 %v, 2 %v, 3 %v; want only 2 and 3", w.Tracks("1"), w.Tracks("2"), w.Tracks("3"))
			}
		})

		// The names Latest remembers are bounded by MaxEntries: new names past
		// it are uploaded and announced, but not remembered; known ones still
		// move to their newest upload.
		t.Run("latest is bounded", func(t *testing.T) {
			files := newFiles(s.db, FileLimits{MaxEntries: 3}, testLogger(t))
			w, dir, _ := watch(t, files, FileOwner{Session: "latest-cap-" + randomHex(4)})
			beforeExecution(t, w, "1")
			writeFile(t, filepath.Join(dir, "a.txt"), []byte("a"))
			writeFile(t, filepath.Join(dir, "b.txt"), []byte("b"))
			afterExecution(t, w, "1")
			firstA, _ := w.Latest("a.txt")
			if err := os.Remove(filepath.Join(dir, "b.txt")); err != nil {
				t.Fatal(err)
			}
			beforeExecution(t, w, "2")
			writeFile(t, filepath.Join(dir, "c.txt"), []byte("c"))
			afterExecution(t, w, "2")
			if err := os.Remove(filepath.Join(dir, "c.txt")); err != nil {
				t.Fatal(err)
			}
			beforeExecution(t, w, "3")
			writeFile(t, filepath.Join(dir, "d.txt"), []byte("d"))
			writeFile(t, filepath.Join(dir, "a.txt"), []byte("a2"))
			if got := afterExecution(t, w, "3"); !slices.Contains(got, "d.txt") {
				t.Fatalf("d.txt not uploaded past the cap: %q", got)
			}
			if _, ok := w.Latest("d.txt"); ok {
				t.Error("a fourth name remembered past MaxEntries 3")
			}
			if id, ok := w.Latest("a.txt"); !ok || id == firstA {
				t.Errorf("a known name did not move to its newest upload: %q %v (first %q)", id, ok, firstA)
			}
		})

		t.Run("forget", func(t *testing.T) {
			session := "forget-" + randomHex(4)
			w, dir, _ := watch(t, s.Files(), FileOwner{Session: session})
			beforeExecution(t, w, "gone")
			beforeExecution(t, w, "kept")
			w.Forget("gone")
			w.Forget("never tracked")
			if w.Tracks("gone") || !w.Tracks("kept") {
				t.Fatalf("after Forget: tracks gone %v, kept %v", w.Tracks("gone"), w.Tracks("kept"))
			}
			writeFile(t, filepath.Join(dir, "out.txt"), []byte("x"))
			if report, ok, err := w.AfterExecution(ctx, "gone", ""); ok || err != nil || len(report.Files) != 0 {
				t.Errorf("AfterExecution of a forgotten key = %+v, %v, %v", report, ok, err)
			}
			if n := countDocs(t, s, filesBucket+".files", bson.D{{Key: "metadata.session", Value: session}}); n != 0 {
				t.Errorf("%d files stored for a forgotten execution", n)
			}
			if got, want := afterExecution(t, w, "kept"), []string{"out.txt"}; !slices.Equal(got, want) {
				t.Errorf("uploaded %q, want %q", got, want)
			}
		})

		t.Run("latest upload of a name", func(t *testing.T) {
			w, dir, _ := watch(t, s.Files(), FileOwner{Session: "latest-" + randomHex(4)})
			if id, ok := w.Latest("out.txt"); ok {
				t.Fatalf("Latest before any upload = %q", id)
			}
			var ids []string
			for i, content := range []string{"v1", "version 2"} {
				key := fmt.Sprint(i)
				beforeExecution(t, w, key)
				writeFile(t, filepath.Join(dir, "out.txt"), []byte(content))
				if i == 1 {
					must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "link")))
				}
				report, ok, err := w.AfterExecution(ctx, key, "")
				if err != nil || !ok || len(report.Files) != i+1 || report.Files[len(report.Files)-1].Name != "out.txt" {
					t.Fatalf("AfterExecution(%s) = %+v, %v, %v", key, report, ok, err)
				}
				up := report.Files[len(report.Files)-1]
				if id, ok := w.Latest("out.txt"); !ok || id != up.ID {
					t.Errorf("Latest after upload %d = %q, %v; want %q", i+1, id, ok, up.ID)
				}
				ids = append(ids, up.ID)
			}
			if ids[0] == ids[1] {
				t.Errorf("both uploads have id %s", ids[0])
			}
			r, err := s.Files().OpenFile(ctx, ids[1], "out.txt")
			must(t, err)
			defer r.Close()
			if got := readAll(t, r); string(got) != "version 2" {
				t.Errorf("latest is %q", got)
			}
			if id, ok := w.Latest("link"); ok {
				t.Errorf("Latest of a skipped entry = %q", id)
			}
		})

		t.Run("untracked key", func(t *testing.T) {
			session := "untracked-" + randomHex(4)
			w, dir, _ := watch(t, s.Files(), FileOwner{Session: session})
			writeFile(t, filepath.Join(dir, "out.txt"), []byte("x"))
			if w.Tracks("nobody") {
				t.Error("tracks a key never given")
			}
			report, ok, err := w.AfterExecution(ctx, "nobody", "")
			if ok || err != nil || len(report.Files) != 0 || report.After != nil {
				t.Errorf("AfterExecution of an untracked key = %+v, %v, %v", report, ok, err)
			}
			if n := countDocs(t, s, filesBucket+".files", bson.D{{Key: "metadata.session", Value: session}}); n != 0 {
				t.Errorf("%d files stored for an untracked key", n)
			}
			if _, ok := w.Latest("out.txt"); ok {
				t.Error("Latest knows a file never uploaded")
			}
		})

		t.Run("closed watcher", func(t *testing.T) {
			w, _, _ := watch(t, s.Files(), FileOwner{Session: "closed-" + randomHex(4)})
			beforeExecution(t, w, "running")
			must(t, w.Close())
			if w.BeforeExecution("after close") {
				t.Error("BeforeExecution kept a baseline on a closed watcher")
			}
			if _, ok, err := w.AfterExecution(ctx, "running", ""); !ok || err == nil {
				t.Errorf("AfterExecution on a closed watcher = %v, %v; want the error", ok, err)
			}
		})

		// Every method may be called from any goroutine (run with -race to see it).
		t.Run("concurrent use", func(t *testing.T) {
			w, dir, _ := watch(t, s.Files(), FileOwner{Session: "concurrent-" + randomHex(4)})
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 5 {
						key := fmt.Sprintf("%d-%d", g, i)
						name := fmt.Sprintf("g%d-%d.txt", g, i)
						if !w.BeforeExecution(key) {
							t.Errorf("BeforeExecution(%s) kept no baseline", key)
							return
						}
						if err := os.WriteFile(filepath.Join(dir, name), []byte(key), 0o644); err != nil {
							t.Error(err)
							return
						}
						if i%2 == 1 {
							w.Forget(key)
							continue
						}
						_ = w.Tracks(key)
						if _, ok, err := w.AfterExecution(ctx, key, ""); !ok || err != nil {
							t.Errorf("AfterExecution(%s) = %v, %v", key, ok, err)
						}
						_, _ = w.Latest(name)
					}
				}()
			}
			wg.Wait()
		})
	})
}

// TestExecutionSentDuringUpload: an execution whose BeforeExecution comes while an upload is
// under way (the kernel has replied, and runs the next one) keeps its own snapshot, taken after
// the upload's scan; rebasing it onto that older scan would upload under it what was there
// before it was sent. BeforeExecution and Tracks do not wait for the stalled upload.
func TestExecutionSentDuringUpload(t *testing.T) {
	s, proxy := proxiedStore(t)
	w, dir, _ := watch(t, s.Files(), FileOwner{Session: "during-" + randomHex(4)})
	beforeExecution(t, w, "first")
	content := []byte("stalled upload " + randomHex(16))
	writeFile(t, filepath.Join(dir, "first.txt"), content)
	stall := proxy.on(content, holdRequest)

	type result struct {
		names []string
		ok    bool
		err   error
	}
	uploaded := make(chan result, 1)
	go func() {
		report, ok, err := w.AfterExecution(context.Background(), "first", "")
		var names []string
		for _, f := range report.Files {
			names = append(names, f.Name)
		}
		uploaded <- result{names, ok, err}
	}()
	<-stall.fired // the upload has scanned, and is inside a database write

	writeFile(t, filepath.Join(dir, "before-second.txt"), []byte("x"))
	sent := make(chan bool, 1)
	go func() { sent <- w.BeforeExecution("second") && w.Tracks("second") && !w.Tracks("first") }()
	select {
	case ok := <-sent:
		if !ok {
			t.Error("second not tracked, or first still tracked, during the upload")
		}
	case <-time.After(deadlockGuard):
		stall.Release()
		t.Fatal("BeforeExecution waited for the stalled upload")
	}
	stall.Release()
	if res := <-uploaded; res.err != nil || !res.ok || !slices.Equal(res.names, []string{"first.txt"}) {
		t.Fatalf("first's AfterExecution = %q, %v, %v; want first.txt", res.names, res.ok, res.err)
	}

	writeFile(t, filepath.Join(dir, "second.txt"), []byte("2"))
	if got, want := afterExecution(t, w, "second"), []string{"second.txt"}; !slices.Equal(got, want) {
		t.Errorf("second uploaded %q, want %q", got, want)
	}
}

func TestDefaultFileLimits(t *testing.T) {
	d := DefaultFileLimits()
	if got := (FileLimits{}).withDefaults(); got != d {
		t.Errorf("zero FileLimits became %+v, want DefaultFileLimits %+v", got, d)
	}
	if got := d.withDefaults(); got != d {
		t.Errorf("DefaultFileLimits filled became %+v", got)
	}
	negative := FileLimits{MaxFileBytes: -1, MaxFilesPerExecution: -1, MaxSessionBytes: -1, MaxDepth: -1, MaxEntries: -1, MaxTrackedExecutions: -1}
	want := d
	want.MaxDepth = 0 // top level only
	if got := negative.withDefaults(); got != want {
		t.Errorf("negative FileLimits became %+v, want %+v", got, want)
	}
	if d.MaxTrackedExecutions != 64 {
		t.Errorf("MaxTrackedExecutions defaults to %d, want 64 (as the gateway's maxSnapshots)", d.MaxTrackedExecutions)
	}
}

// TestOpenFillsFileLimits: Open fills FileLimits once, so a negative MaxDepth stays "top level
// only" rather than becoming the default depth.
func TestOpenFillsFileLimits(t *testing.T) {
	forEachBackend(t, Config{Files: FileLimits{MaxDepth: -1, MaxEntries: 7}}, func(t *testing.T, s *Store) {
		want := DefaultFileLimits()
		want.MaxDepth, want.MaxEntries = 0, 7
		if got := s.Files().Limits(); got != want {
			t.Errorf("Limits() = %+v, want %+v", got, want)
		}
	})
}
