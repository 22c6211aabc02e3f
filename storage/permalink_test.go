package storage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestPermalinkSaveAndGet(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := s.Permalinks()
		tests := []struct {
			name string
			cell Cell
		}{
			{"python", Cell{Code: "print(1+1)", Language: "python3", Interacts: "[]"}},
			{"sage with interacts", Cell{Code: "@interact\ndef f(n=1): print(n)", Language: "sage", Interacts: `[{"n": 4}]`}},
			{"empty code", Cell{Code: "", Language: "python3"}},
			{"unicode and NUL", Cell{Code: "s = 'π ☃ 😀 \x00 end'", Language: "python3", Interacts: "[]"}},
			{"large", Cell{Code: strings.Repeat("x = 1\n", 50000), Language: "python3"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := time.Now().Add(-time.Second)
				id, err := p.Save(ctx, tc.cell)
				if err != nil {
					t.Fatalf("Save: %v", err)
				}
				if len(id) != 12 || !validID(id) {
					t.Errorf("id %q: want 12 URL-safe characters", id)
				}
				if id != p.ID(tc.cell) {
					t.Errorf("Save gave %q, ID() predicts %q", id, p.ID(tc.cell))
				}
				again, err := p.Save(ctx, tc.cell)
				if err != nil || again != id {
					t.Errorf("second Save = %q, %v; want the same id %q", again, err, id)
				}
				got, err := p.Get(ctx, id)
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if got.Cell != tc.cell {
					t.Errorf("Get returned a different cell:\n got %+q\nwant %+q", got.Cell, tc.cell)
				}
				if got.ID != id || got.Requests != 1 || got.Created.Before(before) || got.LastAccessed.Before(got.Created) {
					t.Errorf("bookkeeping: %+v", got)
				}
				got2, err := p.Get(ctx, id)
				if err != nil || got2.Requests != 2 || got2.LastAccessed.Before(got.LastAccessed) {
					t.Errorf("second Get: requests %d, last access %v (before %v), err %v", got2.Requests, got2.LastAccessed, got.LastAccessed, err)
				}
			})
		}
	})
}

func TestPermalinkIDsDependOnEveryField(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		base := Cell{Code: "1+1", Language: "python3", Interacts: "[]"}
		variants := []Cell{
			base,
			{Code: "1+2", Language: "python3", Interacts: "[]"},
			{Code: "1+1", Language: "sage", Interacts: "[]"},
			{Code: "1+1", Language: "python3", Interacts: ""},
			// Same concatenation, different split: the encoding must keep them apart.
			{Code: "1+1python3", Language: "", Interacts: "[]"},
			{Code: "1", Language: "+1python3", Interacts: "[]"},
		}
		seen := map[string]int{}
		for i, c := range variants {
			id := s.Permalinks().ID(c)
			if j, dup := seen[id]; dup {
				t.Errorf("variants %d and %d share id %s", j, i, id)
			}
			seen[id] = i
		}
	})
}

func TestPermalinkInvalidCells(t *testing.T) {
	forEachBackend(t, Config{MaxCellBytes: 1000}, func(t *testing.T, s *Store) {
		tests := []struct {
			name string
			cell Cell
		}{
			{"no language", Cell{Code: "1"}},
			{"long language", Cell{Code: "1", Language: strings.Repeat("a", 101)}},
			{"too large", Cell{Code: strings.Repeat("a", 1000), Language: "python3"}},
			{"invalid UTF-8 code", Cell{Code: "a\xffb", Language: "python3"}},
			{"invalid UTF-8 interacts", Cell{Code: "1", Language: "python3", Interacts: "\xc3"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := s.Permalinks().Save(context.Background(), tc.cell); !errors.Is(err, ErrInvalidCell) {
					t.Errorf("Save: got %v, want ErrInvalidCell", err)
				}
			})
		}
	})
}

func TestPermalinkGetUnknown(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		for _, id := range []string{"AAAAAAAAAAAA", "", "../../etc", "a b", "{$gt: ''}", strings.Repeat("a", 65), "ünï"} {
			if _, err := s.Permalinks().Get(context.Background(), id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q): got %v, want ErrNotFound", id, err)
			}
		}
	})
}

// TestPermalinkCollision plants a different cell under the id another cell would get, as a hash
// prefix collision would.
func TestPermalinkCollision(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := s.Permalinks()
		cell := Cell{Code: "print('victim')", Language: "python3", Interacts: "[]"}
		digest := p.digest(cell)
		short := idCandidate(digest, 0)
		planted := permalinkDoc{
			ID: short, Code: "print('squatter')", Language: "python3", Digest: "some-other-digest",
			Created: time.Now().UTC(), LastAccessed: time.Now().UTC(),
		}
		if _, err := p.coll.InsertOne(ctx, planted); err != nil {
			t.Fatal(err)
		}

		id, err := p.Save(ctx, cell)
		if err != nil {
			t.Fatalf("Save: %v", err)
		}
		if id != idCandidate(digest, 1) || len(id) != 16 {
			t.Fatalf("Save after collision = %q, want the 16-character id %q", id, idCandidate(digest, 1))
		}
		if again, err := p.Save(ctx, cell); err != nil || again != id {
			t.Errorf("repeated Save = %q, %v; want %q", again, err, id)
		}
		got, err := p.Get(ctx, id)
		if err != nil || got.Cell != cell {
			t.Errorf("Get(long id) = %+v, %v", got.Cell, err)
		}
		squatter, err := p.Get(ctx, short)
		if err != nil || squatter.Code != planted.Code {
			t.Errorf("Get(short id) = %+v, %v; want the planted cell untouched", squatter.Cell, err)
		}

		// The queue hands out the short id at once, then finds the collision on writing.
		moved := make(chan [2]string, 1)
		q := NewQueue(ctx, p, QueueConfig{OnMoved: func(oldID, newID string) { moved <- [2]string{oldID, newID} }, Logger: testLogger(t)})
		defer q.Close(ctx)
		other := Cell{Code: "print('victim 2')", Language: "python3"}
		otherDigest := p.digest(other)
		planted.ID, planted.Code = idCandidate(otherDigest, 0), "print('squatter 2')"
		if _, err := p.coll.InsertOne(ctx, planted); err != nil {
			t.Fatal(err)
		}
		qid, err := q.Enqueue(other)
		if err != nil || qid != planted.ID {
			t.Fatalf("Enqueue = %q, %v; want the short id %q", qid, err, planted.ID)
		}
		select {
		case m := <-moved:
			if m != [2]string{planted.ID, idCandidate(otherDigest, 1)} {
				t.Errorf("OnMoved%v, want (%s, %s)", m, planted.ID, idCandidate(otherDigest, 1))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("OnMoved not called")
		}
	})
}

func TestPermalinkKey(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv testServer) {
		ctx := context.Background()
		cell := Cell{Code: "factor(2^64+1)", Language: "sage"}

		first := srv.open(t, Config{})
		id := first.Permalinks().ID(cell)
		var doc bson.M
		if err := first.db.Collection(settingsCollection).FindOne(ctx, bson.D{{Key: "_id", Value: permalinkKeySetting}}).Decode(&doc); err != nil {
			t.Fatalf("the generated key is not stored: %v", err)
		}

		// Another instance on the same database derives the same ids.
		second := srv.open(t, Config{})
		if got := second.Permalinks().ID(cell); got != id {
			t.Errorf("second instance derives %q, first %q", got, id)
		}
		// A different database (another deployment) has its own key, so its ids tell nothing.
		other := srv.open(t, Config{Database: "other"})
		if got := other.Permalinks().ID(cell); got == id {
			t.Errorf("two databases with separate keys gave the same id %q", got)
		}
		// An explicit key wins.
		keyed := srv.open(t, Config{PermalinkKey: []byte("0123456789abcdef0123456789abcdef")})
		if got := keyed.Permalinks().ID(cell); got == id {
			t.Errorf("explicit key ignored")
		}
	})
}

// TestMaxCellBytes: the configured cap is enforced, and clamped to what still fits in a BSON
// document; a cell of the clamped size is stored and read back whole.
func TestMaxCellBytes(t *testing.T) {
	slow(t)
	forEachBackend(t, Config{MaxCellBytes: 64 << 20}, func(t *testing.T, s *Store) {
		ctx := context.Background()
		p := s.Permalinks()
		if p.maxCellBytes != maxCellBytesLimit {
			t.Fatalf("MaxCellBytes 64 MiB became %d, want the %d clamp", p.maxCellBytes, maxCellBytesLimit)
		}
		lang := "python3"
		tooLarge := Cell{Code: strings.Repeat("x", maxCellBytesLimit-len(lang)+1), Language: lang}
		if err := p.Validate(tooLarge); !errors.Is(err, ErrInvalidCell) {
			t.Errorf("Validate of a cell over the clamp = %v", err)
		}
		largest := Cell{Code: strings.Repeat("x = 1\n", (maxCellBytesLimit-len(lang)-2)/6), Language: lang, Interacts: "[]"}
		id, err := p.Save(ctx, largest)
		if err != nil {
			t.Fatalf("Save of a cell at the clamp: %v", err)
		}
		got, err := p.Get(ctx, id)
		if err != nil || got.Cell != largest {
			t.Errorf("Get of the largest cell: %d bytes of code, %v", len(got.Code), err)
		}
	})
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"AbC-_09xyzQW", true},
		{"a", true},
		{"", false},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"a/b", false},
		{"a.b", false},
		{"a=", false},
		{"é", false},
	}
	for _, tc := range tests {
		if got := validID(tc.id); got != tc.want {
			t.Errorf("validID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func FuzzValidID(f *testing.F) {
	for _, s := range []string{"AbC-_09xyzQW", "", "../x", "\x00", "{$ne:1}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if !validID(id) {
			return
		}
		if len(id) == 0 || len(id) > maxIDLength || strings.ContainsAny(id, "/.$ \x00{}") {
			t.Errorf("validID accepted %q", id)
		}
	})
}
