package storage

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// errIDSpaceExhausted would need five different cells agreeing on 192 bits of a keyed hash.
var errIDSpaceExhausted = errors.New("storage: save permalink: every candidate id is taken by different content")

// ErrInvalidCell is returned (wrapped, with the reason) for a cell that cannot be stored as is.
var ErrInvalidCell = errors.New("storage: invalid cell")

// Cell is what a permalink stores: the code, the kernel it runs in, and the interact state,
// kept exactly as the client sent them.
type Cell struct {
	Code     string
	Language string // kernel name, e.g. "python3", "sage"
	// Interacts is opaque to storage (Sage cell clients send a JSON string such as "[]").
	Interacts string
}

// Permalink is a stored cell with its bookkeeping.
type Permalink struct {
	ID string
	Cell
	Created      time.Time
	LastAccessed time.Time
	// Requests counts Get calls (as the Sage cell server does), not saves.
	Requests int64
}

// Permalinks stores cells under short ids derived from their content.
//
// An id is the base64url encoding of the first bytes of HMAC-SHA256(key, canonical cell): 12
// characters (72 bits) normally, so that ids are short, not sequential, and far too sparse to
// enumerate. Identical cells get the same id without any lookup. Should two different cells
// share the 12-character prefix, the later one takes the next, longer, prefix of its own digest
// (16, 24, 32, then 43 characters); the sequence depends only on the content, so repeated saves
// of either cell keep finding their own id.
type Permalinks struct {
	coll         *mongo.Collection
	key          []byte
	maxCellBytes int
	log          zerolog.Logger
}

// idAttempts is how many candidate ids a cell has (see idDigestLength).
const idAttempts = 5

// idDigestLength is the digest prefix (in bytes) of a cell's attempt-th candidate id, for attempt
// below idAttempts; multiples of 3 give base64 without padding. 9 bytes = 12 characters.
func idDigestLength(attempt int) int {
	return [idAttempts]int{9, 12, 18, 24, sha256.Size}[attempt]
}

const (
	maxIDLength      = 64
	digestDomainSep  = "cellgate permalink v1\x00"
	fieldCode        = "code"
	fieldLanguage    = "language"
	fieldInteracts   = "interacts"
	fieldDigest      = "digest"
	fieldCreated     = "created"
	fieldLastAccess  = "last_accessed"
	fieldRequests    = "requests"
	maxLanguageBytes = 100
)

type permalinkDoc struct {
	ID           string    `bson:"_id"`
	Code         string    `bson:"code"`
	Language     string    `bson:"language"`
	Interacts    string    `bson:"interacts"`
	Digest       string    `bson:"digest"`
	Created      time.Time `bson:"created"`
	LastAccessed time.Time `bson:"last_accessed"`
	Requests     int64     `bson:"requests"`
}

func (d permalinkDoc) permalink() Permalink {
	return Permalink{
		ID:           d.ID,
		Cell:         Cell{Code: d.Code, Language: d.Language, Interacts: d.Interacts},
		Created:      d.Created,
		LastAccessed: d.LastAccessed,
		Requests:     d.Requests,
	}
}

// Validate reports why a cell cannot be stored, wrapping ErrInvalidCell.
func (p *Permalinks) Validate(cell Cell) error {
	switch {
	case cell.Language == "":
		return fmt.Errorf("%w: empty language", ErrInvalidCell)
	case len(cell.Language) > maxLanguageBytes:
		return fmt.Errorf("%w: language name longer than %d bytes", ErrInvalidCell, maxLanguageBytes)
	case len(cell.Code)+len(cell.Language)+len(cell.Interacts) > p.maxCellBytes:
		return fmt.Errorf("%w: larger than %d bytes", ErrInvalidCell, p.maxCellBytes)
	case !utf8.ValidString(cell.Code) || !utf8.ValidString(cell.Language) || !utf8.ValidString(cell.Interacts):
		// BSON strings are UTF-8, and FerretDB would silently replace the bad bytes.
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidCell)
	}
	return nil
}

// digest is the keyed hash of an unambiguous encoding of the cell: each field is length-prefixed,
// so no two different cells encode alike.
func (p *Permalinks) digest(cell Cell) [sha256.Size]byte {
	mac := hmac.New(sha256.New, p.key)
	mac.Write([]byte(digestDomainSep))
	var n [binary.MaxVarintLen64]byte
	for _, field := range [...]string{cell.Language, cell.Code, cell.Interacts} {
		mac.Write(n[:binary.PutUvarint(n[:], uint64(len(field)))])
		mac.Write([]byte(field))
	}
	var sum [sha256.Size]byte
	mac.Sum(sum[:0])
	return sum
}

func idCandidate(digest [sha256.Size]byte, attempt int) string {
	return base64.RawURLEncoding.EncodeToString(digest[:idDigestLength(attempt)])
}

func digestString(digest [sha256.Size]byte) string {
	return base64.RawURLEncoding.EncodeToString(digest[:])
}

// ID is the id cell gets unless it collides with a different stored cell. It needs no database.
func (p *Permalinks) ID(cell Cell) string {
	return idCandidate(p.digest(cell), 0)
}

// Save stores cell, or finds it already stored, and returns its id.
func (p *Permalinks) Save(ctx context.Context, cell Cell) (string, error) {
	if err := p.Validate(cell); err != nil {
		return "", err
	}
	res, err := p.store(ctx, cell, p.digest(cell), 0, time.Now(), 0)
	if err != nil {
		return "", err
	}
	return res.id, nil
}

type storeResult struct {
	id       string
	attempt  int  // of the id used, for idDigestLength
	inserted bool // false when an identical cell was already stored
}

// store inserts the cell under the first free candidate id at or after firstAttempt, or finds it
// stored already. It is idempotent, so the queue can retry it after a lost reply.
func (p *Permalinks) store(ctx context.Context, cell Cell, digest [sha256.Size]byte, firstAttempt int, created time.Time, requests int64) (storeResult, error) {
	created = created.UTC().Truncate(time.Millisecond) // BSON dates have millisecond precision
	doc := permalinkDoc{
		Code:         cell.Code,
		Language:     cell.Language,
		Interacts:    cell.Interacts,
		Digest:       digestString(digest),
		Created:      created,
		LastAccessed: created,
		Requests:     requests,
	}
	vanished := 0
	for attempt := firstAttempt; attempt < idAttempts; attempt++ {
		doc.ID = idCandidate(digest, attempt)
		_, err := p.coll.InsertOne(ctx, doc)
		if err == nil {
			return storeResult{id: doc.ID, attempt: attempt, inserted: true}, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return storeResult{}, fmt.Errorf("storage: save permalink %s: %w", doc.ID, err)
		}
		var existing struct {
			Digest string `bson:"digest"`
		}
		err = p.coll.FindOne(ctx, bson.D{{Key: "_id", Value: doc.ID}},
			options.FindOne().SetProjection(bson.D{{Key: fieldDigest, Value: 1}})).Decode(&existing)
		if errors.Is(err, mongo.ErrNoDocuments) && vanished < 3 {
			// Deleted between our insert and our find: the id is free again.
			vanished++
			attempt--
			continue
		}
		if err != nil {
			return storeResult{}, fmt.Errorf("storage: check existing permalink %s: %w", doc.ID, err)
		}
		if existing.Digest == doc.Digest {
			return storeResult{id: doc.ID, attempt: attempt}, nil
		}
		p.log.Info().Str("id", doc.ID).Msg("permalink id collision; using a longer id")
	}
	return storeResult{}, errIDSpaceExhausted
}

// Get returns the permalink, counting the request and updating its last access time.
func (p *Permalinks) Get(ctx context.Context, id string) (Permalink, error) {
	if !validID(id) {
		return Permalink{}, ErrNotFound
	}
	var doc permalinkDoc
	err := p.coll.FindOneAndUpdate(ctx,
		bson.D{{Key: "_id", Value: id}},
		bson.D{
			{Key: "$inc", Value: bson.D{{Key: fieldRequests, Value: int64(1)}}},
			{Key: "$set", Value: bson.D{{Key: fieldLastAccess, Value: time.Now().UTC()}}},
		},
		options.FindOneAndUpdate().SetReturnDocument(options.After),
	).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Permalink{}, ErrNotFound
	}
	if err != nil {
		return Permalink{}, fmt.Errorf("storage: get permalink %s: %w", id, err)
	}
	return doc.permalink(), nil
}

// Peek returns the permalink without counting a request (for link previews).
func (p *Permalinks) Peek(ctx context.Context, id string) (Permalink, error) {
	if !validID(id) {
		return Permalink{}, ErrNotFound
	}
	var doc permalinkDoc
	err := p.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Permalink{}, ErrNotFound
	}
	if err != nil {
		return Permalink{}, fmt.Errorf("storage: peek permalink %s: %w", id, err)
	}
	return doc.permalink(), nil
}

// Delete removes permalink id; deleting what is not there is not an error.
// A cell still in the write-behind queue is written after this (delete it
// again once the queue has drained).
func (p *Permalinks) Delete(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	if _, err := p.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return fmt.Errorf("storage: delete permalink %s: %w", id, err)
	}
	return nil
}

// addRequests adds requests counted while the permalink was still in the write-behind queue.
func (p *Permalinks) addRequests(ctx context.Context, id string, n int64, at time.Time) error {
	_, err := p.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: id}},
		bson.D{
			{Key: "$inc", Value: bson.D{{Key: fieldRequests, Value: n}}},
			{Key: "$max", Value: bson.D{{Key: fieldLastAccess, Value: at.UTC()}}},
		})
	if err != nil {
		return fmt.Errorf("storage: count requests of permalink %s: %w", id, err)
	}
	return nil
}

// validID accepts what an id can look like (base64url, bounded length) so that arbitrary client
// input never reaches a query.
func validID(id string) bool {
	if id == "" || len(id) > maxIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
