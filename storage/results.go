package storage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

const (
	resultsCollection      = "results"
	resultBodiesCollection = "result_bodies"

	// maxResultBytes keeps a result's body, with its document, within
	// MongoDB's 16 MiB BSON limit.
	maxResultBytes = 15 << 20
)

// ErrResultTooLarge is returned for a result body over 15 MiB.
var ErrResultTooLarge = errors.New("storage: result too large")

// Result is what a permalink's execution showed: an opaque JSON document
// (the gateway's result.Result), and when it was made.
type Result struct {
	Body    []byte
	Created time.Time
}

// Results keeps a result per permalink. Bodies are stored once per
// identical content (by SHA-256) however many permalinks show them; a
// permalink's result is a small reference document, replaced by each
// newer result of the same permalink.
//
// Bodies are JSON text, not BSON: outputs have keys (MIME types, widget
// state) that MongoDB restricts, and nothing here queries inside them.
type Results struct {
	refs   *mongo.Collection
	bodies *mongo.Collection
}

type resultRef struct {
	ID      string    `bson:"_id"` // the permalink id
	Digest  string    `bson:"digest"`
	Created time.Time `bson:"created"`
	Bytes   int       `bson:"bytes"`
}

type resultBody struct {
	ID    string `bson:"_id"` // the body's digest
	Body  string `bson:"body"`
	Bytes int    `bson:"bytes"`
}

// Put stores body as the result of permalink id, made at created. A
// result older than the one stored is ignored.
func (r *Results) Put(ctx context.Context, id string, body []byte, created time.Time) error {
	switch {
	case !validID(id):
		return fmt.Errorf("storage: put result: invalid permalink id %q", id)
	case len(body) > maxResultBytes:
		return ErrResultTooLarge
	case !utf8.Valid(body):
		// JSON from encoding/json is valid UTF-8; anything else would be altered.
		return errors.New("storage: put result: body is not valid UTF-8")
	}
	sum := sha256.Sum256(body)
	digest := base64.RawURLEncoding.EncodeToString(sum[:])
	_, err := r.bodies.InsertOne(ctx, resultBody{ID: digest, Body: string(body), Bytes: len(body)})
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("storage: put result body: %w", err)
	}
	created = created.UTC().Truncate(time.Millisecond)
	ref := resultRef{ID: id, Digest: digest, Created: created, Bytes: len(body)}
	// Replace only an older result: results of one permalink may be put
	// out of order by concurrent sessions.
	res, err := r.refs.ReplaceOne(ctx,
		bson.D{{Key: "_id", Value: id}, {Key: "created", Value: bson.D{{Key: "$lte", Value: created}}}},
		ref)
	if err != nil {
		return fmt.Errorf("storage: put result of %s: %w", id, err)
	}
	if res.MatchedCount > 0 {
		return nil
	}
	_, err = r.refs.InsertOne(ctx, ref)
	if err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("storage: put result of %s: %w", id, err)
	}
	// A duplicate is a newer result already there.
	return nil
}

// Get returns permalink id's result, or ErrNotFound.
func (r *Results) Get(ctx context.Context, id string) (Result, error) {
	if !validID(id) {
		return Result{}, ErrNotFound
	}
	var ref resultRef
	err := r.refs.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&ref)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return Result{}, ErrNotFound
	}
	if err != nil {
		return Result{}, fmt.Errorf("storage: get result of %s: %w", id, err)
	}
	var body resultBody
	err = r.bodies.FindOne(ctx, bson.D{{Key: "_id", Value: ref.Digest}}).Decode(&body)
	if errors.Is(err, mongo.ErrNoDocuments) {
		// Deleted with another permalink between its check and our put.
		return Result{}, ErrNotFound
	}
	if err != nil {
		return Result{}, fmt.Errorf("storage: get result of %s: %w", id, err)
	}
	return Result{Body: []byte(body.Body), Created: ref.Created}, nil
}

// Delete removes permalink id's result, and its body if no other
// permalink shows it. Deleting what is not there is not an error.
func (r *Results) Delete(ctx context.Context, id string) error {
	if !validID(id) {
		return nil
	}
	var ref resultRef
	err := r.refs.FindOneAndDelete(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&ref)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: delete result of %s: %w", id, err)
	}
	n, err := r.refs.CountDocuments(ctx, bson.D{{Key: "digest", Value: ref.Digest}}, options.Count().SetLimit(1))
	if err != nil {
		return fmt.Errorf("storage: delete result of %s: %w", id, err)
	}
	if n == 0 {
		if _, err := r.bodies.DeleteOne(ctx, bson.D{{Key: "_id", Value: ref.Digest}}); err != nil {
			return fmt.Errorf("storage: delete result body of %s: %w", id, err)
		}
	}
	return nil
}

// Usage is how many results and distinct bodies are stored, and their
// bytes (for figures and operators).
func (r *Results) Usage(ctx context.Context) (results, bodies, bytes int64, err error) {
	if results, err = r.refs.CountDocuments(ctx, bson.D{}); err != nil {
		return 0, 0, 0, fmt.Errorf("storage: count results: %w", err)
	}
	cur, err := r.bodies.Find(ctx, bson.D{}, options.Find().SetProjection(bson.D{{Key: "bytes", Value: 1}}))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("storage: sum result bodies: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		var b struct {
			Bytes int64 `bson:"bytes"`
		}
		if err := cur.Decode(&b); err != nil {
			return 0, 0, 0, fmt.Errorf("storage: sum result bodies: %w", err)
		}
		bodies++
		bytes += b.Bytes
	}
	return results, bodies, bytes, cur.Err()
}
