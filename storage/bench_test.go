package storage

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"
)

// benchStore opens a store on a fresh embedded database.
func benchStore(b *testing.B) *Store {
	b.Helper()
	e := startEmbedded(b, b.TempDir())
	return openStore(b, Config{URI: e.URI(), Embedded: e, Files: FileLimits{MaxFileBytes: 16 << 20, MaxSessionBytes: 1 << 50}})
}

func BenchmarkPermalinkSaveNew(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	prefix := randomHex(8)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		cell := Cell{Code: fmt.Sprintf("# %s\nprint(%d)", prefix, i), Language: "python3", Interacts: "[]"}
		if _, err := s.Permalinks().Save(ctx, cell); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPermalinkSaveExisting(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	cell := Cell{Code: "print('again')", Language: "python3", Interacts: "[]"}
	if _, err := s.Permalinks().Save(ctx, cell); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Permalinks().Save(ctx, cell); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPermalinkGet(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	ids := make([]string, 100)
	for i := range ids {
		id, err := s.Permalinks().Save(ctx, Cell{Code: fmt.Sprint("print(", i, ")"), Language: "python3"})
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	for i := 0; b.Loop(); i++ {
		if _, err := s.Permalinks().Get(ctx, ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPermalinkGetStored shows how a lookup scales with what the
// database holds: flat, once the embedded database has the index its _id
// lookups need (embedded_index.go; without it, 3.8 ms at 100 stored and
// 157 ms at 10,000).
func BenchmarkPermalinkGetStored(b *testing.B) {
	for _, stored := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("stored=%d", stored), func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			ids := make([]string, stored)
			for i := range ids {
				id, err := s.Permalinks().Save(ctx, Cell{Code: fmt.Sprintf("# a typical cell\nfor i in range(%d):\n    print(i, i*i)", i), Language: "python3"})
				if err != nil {
					b.Fatal(err)
				}
				ids[i] = id
			}
			for i := 0; b.Loop(); i++ {
				if _, err := s.Permalinks().Get(ctx, ids[(i*7919)%len(ids)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQueueEnqueue is the latency a computation sees: no database round trip.
func BenchmarkQueueEnqueue(b *testing.B) {
	s := benchStore(b)
	benchEnqueue(b, NewQueue(context.Background(), s.Permalinks(), QueueConfig{Capacity: 1 << 22, Logger: zerolog.Nop()}))
}

// BenchmarkQueueEnqueueJournaled adds what durability costs: an fsync'd journal append.
func BenchmarkQueueEnqueueJournaled(b *testing.B) {
	s := benchStore(b)
	q, err := OpenQueue(context.Background(), s.Permalinks(), QueueConfig{Capacity: 1 << 22, JournalDir: b.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	benchEnqueue(b, q)
}

func benchEnqueue(b *testing.B, q *Queue) {
	prefix := randomHex(8)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := q.Enqueue(Cell{Code: fmt.Sprintf("# %s\n%d", prefix, i), Language: "python3"}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// The backlog (far more than the database can take in the benchmark's time) is dropped,
	// or kept in the journal.
	closeCtx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = q.Close(closeCtx)
}

const benchFileSize = 10 << 20

func BenchmarkUpload10MB(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	dir := b.TempDir()
	w, err := s.Files().Watch(dir, FileOwner{Session: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	data := randomBytes(benchFileSize, 7)
	path := filepath.Join(dir, "big.bin")
	b.SetBytes(benchFileSize)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		data[0] = byte(i) // a new version each time
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
		snap := Snapshot{} // everything counts as new
		b.StartTimer()
		report, err := w.UploadChanged(ctx, snap, "")
		if err != nil || len(report.Files) != 1 || report.Files[0].Skipped != "" {
			b.Fatalf("UploadChanged = %+v, %v", report, err)
		}
	}
}

func BenchmarkDownload10MB(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	dir := b.TempDir()
	w, err := s.Files().Watch(dir, FileOwner{Session: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), randomBytes(benchFileSize, 8), 0o644); err != nil {
		b.Fatal(err)
	}
	report, err := w.UploadChanged(ctx, Snapshot{}, "")
	if err != nil || len(report.Files) != 1 {
		b.Fatalf("UploadChanged = %+v, %v", report, err)
	}
	id := report.Files[0].ID
	b.SetBytes(benchFileSize)
	for b.Loop() {
		r, err := s.Files().OpenFile(ctx, id, "big.bin")
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, r); err != nil || n != benchFileSize {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		_ = r.Close()
	}
}
