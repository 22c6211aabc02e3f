package storage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestResultsAreStoredOncePerIdenticalBody(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		r := s.Results()
		body := []byte(`{"outputs":[{"output_type":"stream","name":"stdout","text":"π\n"}],"widgets":{"state":{"m.x":{"state":{"$ref":1}}}}}`)
		now := time.Now()
		for _, id := range []string{"aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"} {
			must(t, r.Put(ctx, id, body, now))
		}
		results, bodies, bytes, err := r.Usage(ctx)
		must(t, err)
		if results != 3 || bodies != 1 || bytes != int64(len(body)) {
			t.Fatalf("usage: %d results, %d bodies, %d bytes; want 3 results sharing 1 body of %d bytes", results, bodies, bytes, len(body))
		}
		got, err := r.Get(ctx, "bbbbbbbbbbbb")
		must(t, err)
		if string(got.Body) != string(body) || !got.Created.Equal(now.UTC().Truncate(time.Millisecond)) {
			t.Fatalf("Get = %s at %v; want the body put (keys with . and $ intact) at %v", got.Body, got.Created, now)
		}

		// Deleting one permalink's result keeps the body the others show.
		must(t, r.Delete(ctx, "aaaaaaaaaaaa"))
		if _, err := r.Get(ctx, "aaaaaaaaaaaa"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted result: %v", err)
		}
		if _, err := r.Get(ctx, "cccccccccccc"); err != nil {
			t.Fatalf("another permalink's result after a delete: %v", err)
		}
		must(t, r.Delete(ctx, "bbbbbbbbbbbb"))
		must(t, r.Delete(ctx, "cccccccccccc"))
		must(t, r.Delete(ctx, "cccccccccccc"))
		if results, bodies, _, _ := r.Usage(ctx); results != 0 || bodies != 0 {
			t.Fatalf("after deleting every result: %d results, %d bodies left", results, bodies)
		}
	})
}

func TestNewerResultWins(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		r := s.Results()
		id := "dddddddddddd"
		t0 := time.Now()
		must(t, r.Put(ctx, id, []byte(`"second"`), t0.Add(time.Second)))
		must(t, r.Put(ctx, id, []byte(`"first"`), t0)) // late, and older: ignored
		got, err := r.Get(ctx, id)
		must(t, err)
		if string(got.Body) != `"second"` {
			t.Fatalf("result %s: an older result replaced a newer one", got.Body)
		}
		must(t, r.Put(ctx, id, []byte(`"third"`), t0.Add(2*time.Second)))
		if got, _ := r.Get(ctx, id); string(got.Body) != `"third"` {
			t.Fatalf("result %s, want the newest", got.Body)
		}
	})
}

func TestResultLimits(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		r := s.Results()
		if err := r.Put(ctx, "eeeeeeeeeeee", []byte(strings.Repeat("x", maxResultBytes+1)), time.Now()); !errors.Is(err, ErrResultTooLarge) {
			t.Errorf("oversized body: %v", err)
		}
		if err := r.Put(ctx, "not an id!", []byte(`1`), time.Now()); err == nil {
			t.Error("invalid id accepted")
		}
		if err := r.Put(ctx, "eeeeeeeeeeee", []byte("\xff"), time.Now()); err == nil {
			t.Error("invalid UTF-8 accepted")
		}
		if _, err := r.Get(ctx, "{$gt: ''}"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get of an invalid id: %v", err)
		}
	})
}

func TestPermalinkDelete(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		id, err := s.Permalinks().Save(ctx, Cell{Code: "1", Language: "python3", Interacts: "[]"})
		must(t, err)
		must(t, s.Permalinks().Delete(ctx, id))
		if _, err := s.Permalinks().Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted permalink: %v", err)
		}
		must(t, s.Permalinks().Delete(ctx, id))
	})
}

func TestQueueDeleteForgetsTheWrittenCell(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		q := NewQueue(ctx, s.Permalinks(), fastQueueConfig(t))
		t.Cleanup(func() { _ = q.Close(context.Background()) })
		cell := Cell{Code: "print('delete me')", Language: "python3", Interacts: "[]"}
		id, err := q.Enqueue(cell)
		must(t, err)
		eventually(t, 10*time.Second, "permalink written", func() bool { return q.Len() == 0 })
		must(t, q.Delete(ctx, id))
		if _, err := q.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted permalink: %v", err)
		}
		// The same cell run again is a new permalink, written again.
		again, err := q.Enqueue(cell)
		must(t, err)
		if again != id {
			t.Fatalf("id %s, then %s", id, again)
		}
		eventually(t, 10*time.Second, "permalink written again", func() bool {
			_, err := s.Permalinks().Get(ctx, id)
			return err == nil
		})
	})
}

// A result's image is stored as a file of its own, read back whole, and
// not listed among the files the execution wrote.
func TestPutBytes(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		files := s.Files()
		image := randomBytes(fileChunkSize*fileChunkBatch+fileChunkSize+17, 9)
		f, err := files.PutBytes(ctx, "result-image-1.png", "image/png", image, FileOwner{Session: "result"}, "ffffffffffff")
		must(t, err)
		r, err := files.OpenFile(ctx, f.ID, "")
		must(t, err)
		if got := readAll(t, r); string(got) != string(image) || f.ContentType != "image/png" {
			t.Fatalf("read back %d bytes (%s), put %d", len(got), f.ContentType, len(image))
		}
		listed, err := files.ByPermalink(ctx, "ffffffffffff", time.Time{})
		must(t, err)
		if len(listed) != 0 {
			t.Fatalf("ByPermalink lists a result's image: %+v", listed)
		}
		if _, err := files.PutBytes(ctx, "../escape", "image/png", image, FileOwner{}, "ffffffffffff"); err == nil {
			t.Error("an invalid name was accepted")
		}
		if _, err := files.PutBytes(ctx, "big.png", "image/png", make([]byte, files.Limits().MaxFileBytes+1), FileOwner{}, "ffffffffffff"); err == nil {
			t.Error("a file over the file limit was accepted")
		}
	})
}
