package storage

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Files past their time go with their chunks; newer ones stay.
func TestDeleteExpired(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		files := s.Files()
		w, dir, snap := watch(t, files, FileOwner{Session: "expiry-" + randomHex(4)})
		writeFile(t, filepath.Join(dir, "old.bin"), randomBytes(3*fileChunkSize+5, 1))
		report, err := w.UploadChanged(ctx, snap, "")
		must(t, err)
		old := report.Files[0].ID
		cutoff := time.Now().Add(time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		snap, err = w.Snapshot()
		must(t, err)
		writeFile(t, filepath.Join(dir, "new.bin"), []byte("new"))
		report, err = w.UploadChanged(ctx, snap, "")
		must(t, err)
		fresh := report.Files[0].ID
		_, before, err := files.RefreshUsage(ctx)
		must(t, err)

		n, err := files.DeleteExpired(ctx, cutoff)
		must(t, err)
		if n != 1 {
			t.Fatalf("DeleteExpired removed %d files, want the 1 older than the cutoff", n)
		}
		if _, err := files.OpenFile(ctx, old, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("expired file still opens: %v", err)
		}
		if left, _ := files.chunksColl.CountDocuments(ctx, bson.D{{Key: "files_id", Value: old}}); left != 0 {
			t.Errorf("%d chunks of the expired file left", left)
		}
		if ids := storedIDs(t, files); !slices.Contains(ids, fresh) || slices.Contains(ids, old) {
			t.Errorf("stored after expiry: %v (fresh %s, expired %s)", ids, fresh, old)
		}
		if got := files.stored.Load(); got != before-int64(3*fileChunkSize+5) {
			t.Errorf("stored bytes %d after expiry, want %d", got, before-int64(3*fileChunkSize+5))
		}
	})
}

// Once every file together reaches MaxTotalBytes, uploads are refused with the reason.
func TestMaxTotalBytes(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		files := newFiles(s.db, FileLimits{MaxTotalBytes: 1 << 20}, testLogger(t))
		_, _, err := files.RefreshUsage(ctx)
		must(t, err)
		w, dir, snap := watch(t, files, FileOwner{Session: "cap-" + randomHex(4)})
		writeFile(t, filepath.Join(dir, "a.bin"), randomBytes(700<<10, 2))
		report, err := w.UploadChanged(ctx, snap, "")
		must(t, err)
		if report.Files[0].Skipped != "" {
			t.Fatalf("first file skipped: %s", report.Files[0].Skipped)
		}
		snap, err = w.Snapshot()
		must(t, err)
		writeFile(t, filepath.Join(dir, "b.bin"), randomBytes(700<<10, 3))
		report, err = w.UploadChanged(ctx, snap, "")
		must(t, err)
		if !strings.Contains(report.Files[0].Skipped, "storage is full") {
			t.Fatalf("the file over the total cap: %+v", report.Files[0])
		}
		// Room made (here: the first file expires) lets uploads in again.
		_, err = files.DeleteExpired(ctx, time.Now().Add(time.Second))
		must(t, err)
		snap, err = w.Snapshot()
		must(t, err)
		writeFile(t, filepath.Join(dir, "c.bin"), randomBytes(700<<10, 4))
		report, err = w.UploadChanged(ctx, snap, "")
		must(t, err)
		if len(report.Files) == 0 || report.Files[0].Skipped != "" {
			t.Fatalf("after room was made: %+v", report.Files)
		}
	})
}
