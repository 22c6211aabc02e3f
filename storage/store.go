// Package storage keeps cellgate's permalinks and the files kernels write, in MongoDB (GridFS for
// files) or in an embedded FerretDB when no MongoDB is configured. It speaks to its database only
// through the official Go driver, so both run the same code over the same wire protocol (with one
// exception, below).
//
// FerretDB 1.24 with its SQLite handler lacks a few MongoDB features; the package is designed so
// that it needs none of them:
//   - no TTL indexes (expireAfterSeconds is "not implemented"): nothing here expires by itself;
//   - no partial indexes and no transactions: permalinks rely on _id uniqueness only, and a file
//     becomes visible by a single insert of its files document after its chunks are written;
//   - strings are stored as JSON text, so invalid UTF-8 would be silently replaced: cells with
//     invalid UTF-8 are rejected instead of being stored altered;
//   - no endSessions command (the driver's disconnect gets an error reply; harmless);
//   - lookups by _id miss the _id index (the index and the query spell the JSON path
//     differently): Open adds an index on the query's spelling (embedded_index.go), the one
//     place this package touches the embedded database other than through the driver.
package storage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ErrNotFound is returned for an unknown permalink id or file.
var ErrNotFound = errors.New("storage: not found")

// Config configures Open. Start from DefaultConfig; zero fields take its values too.
type Config struct {
	// URI is a mongodb:// or mongodb+srv:// URI (standalone, replica set or mongos), or
	// Embedded.URI().
	URI string

	// Database defaults to "cellgate".
	Database string

	Logger zerolog.Logger

	// ConnectRetry is how long Open keeps retrying while the server is unreachable, logging each
	// failed attempt. Zero means a single attempt: Open fails at once with the reason.
	ConnectRetry time.Duration

	// ServerSelectionTimeout bounds how long one operation waits for a usable server; it is what
	// makes calls fail (and the write-behind queue back off) quickly while the database is down.
	// Default 5 s. (The driver's own default, 30 s, would hold every request that long.)
	ServerSelectionTimeout time.Duration

	// PermalinkKey keys the hash that derives permalink ids. When empty, a random key is created on
	// first use and kept in the database, so every instance sharing the database derives the same
	// ids. Keying means nobody can compute the id of a given piece of code without the key, so ids
	// reveal nothing and cannot be used to test whether some code was ever run.
	PermalinkKey []byte

	// MaxCellBytes caps len(code)+len(language)+len(interacts) of a permalink. Default 1 MiB,
	// at most 15 MiB.
	MaxCellBytes int

	// Files caps what is uploaded from kernel directories; zero fields take the values of
	// DefaultFileLimits.
	Files FileLimits

	// Embedded is the embedded database URI points at, if it does: Open then also gives its
	// collections the index that lookups by _id need there (see embedded_index.go).
	Embedded *Embedded

	// Collections names more collections of the database that others keep in it (the cluster
	// registry's), created at start on the embedded database so that they get the index too.
	Collections []string
}

// DefaultConfig is the settings Open uses for what is left zero: the one place each default lives.
// It names no database URI: there is no sensible one to assume.
func DefaultConfig() Config {
	return Config{
		Database:               "cellgate",
		ServerSelectionTimeout: 5 * time.Second,
		MaxCellBytes:           1 << 20,
		Files:                  DefaultFileLimits(),
	}
}

// withDefaults fills zero and negative fields from DefaultConfig, but for Files, and clamps
// MaxCellBytes.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Database == "" {
		c.Database = d.Database
	}
	fillPositive(&c.ServerSelectionTimeout, d.ServerSelectionTimeout)
	fillPositive(&c.MaxCellBytes, d.MaxCellBytes)
	// A larger cell would not fit in a 16 MiB BSON document, and the driver's refusal is not an
	// error the write-behind queue could tell from a transient one.
	c.MaxCellBytes = min(c.MaxCellBytes, maxCellBytesLimit)
	// Files is left to newFiles: FileLimits.withDefaults, which turns a negative MaxDepth into 0,
	// must run once.
	return c
}

// fillPositive sets *v to d unless it is positive: no count, size or duration here means
// anything at zero or below.
func fillPositive[T ~int | ~int64](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

const (
	maxCellBytesLimit = 15 << 20

	permalinksCollection = "permalinks"
	settingsCollection   = "settings"
	filesBucket          = "files"

	permalinkKeySetting = "permalink_key"
	permalinkKeyBytes   = 32
)

// Store is a connection to the database with its permalinks and files.
type Store struct {
	client     *mongo.Client
	db         *mongo.Database
	log        zerolog.Logger
	permalinks *Permalinks
	results    *Results
	files      *Files
}

// Open connects to cfg.URI, checks that the server answers, creates the indexes, and loads or
// creates the permalink key. An unreachable server is an error (after ConnectRetry, if set), never
// a panic.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URI == "" {
		return nil, errors.New("storage: empty database URI")
	}
	cfg = cfg.withDefaults()
	where := RedactURI(cfg.URI)
	log := cfg.Logger.With().Str("component", "storage").Logger()

	clientOpts := options.Client().
		ApplyURI(cfg.URI).
		SetAppName("cellgate").
		SetServerSelectionTimeout(cfg.ServerSelectionTimeout).
		SetConnectTimeout(cfg.ServerSelectionTimeout)
	client, err := mongo.Connect(clientOpts)
	if err != nil {
		return nil, fmt.Errorf("storage: database URI %s: %w", where, err)
	}
	fail := func(err error) (*Store, error) {
		disconnectCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = client.Disconnect(disconnectCtx)
		return nil, err
	}

	if err := pingUntilReachable(ctx, client, cfg, where, log); err != nil {
		return fail(err)
	}

	db := client.Database(cfg.Database)
	s := &Store{client: client, db: db, log: log}
	if err := s.createIndexes(ctx); err != nil {
		return fail(err)
	}
	key := cfg.PermalinkKey
	if len(key) == 0 {
		if key, err = s.loadOrCreatePermalinkKey(ctx); err != nil {
			return fail(err)
		}
	}
	s.permalinks = &Permalinks{
		coll:         db.Collection(permalinksCollection),
		key:          append([]byte(nil), key...),
		maxCellBytes: cfg.MaxCellBytes,
		log:          log,
	}
	s.results = &Results{refs: db.Collection(resultsCollection), bodies: db.Collection(resultBodiesCollection)}
	s.files = newFiles(db, cfg.Files, log)
	if s.files.limits.MaxTotalBytes > 0 {
		if _, _, err := s.files.RefreshUsage(ctx); err != nil {
			return fail(err)
		}
	}
	if cfg.Embedded != nil {
		if err := s.createCollections(ctx, cfg.Collections); err != nil {
			return fail(err)
		}
		n, err := cfg.Embedded.indexIDLookups(ctx, cfg.Database)
		if err != nil {
			return fail(err)
		}
		log.Debug().Int("collections", n).Msg("embedded database: _id lookups indexed")
	}
	log.Info().Str("uri", where).Str("database", cfg.Database).Msg("storage ready")
	return s, nil
}

func pingUntilReachable(ctx context.Context, client *mongo.Client, cfg Config, where string, log zerolog.Logger) error {
	deadline := time.Now().Add(cfg.ConnectRetry)
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := client.Ping(ctx, nil)
		if err == nil {
			if attempt > 1 {
				log.Info().Str("uri", where).Int("attempt", attempt).Msg("database reachable")
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("storage: cannot reach database at %s (attempt %d): %w: %w", where, attempt, ctx.Err(), err)
		}
		if cfg.ConnectRetry <= 0 || time.Now().Add(backoff).After(deadline) {
			return fmt.Errorf("storage: cannot reach database at %s (attempt %d): %w", where, attempt, err)
		}
		log.Warn().Err(err).Str("uri", where).Int("attempt", attempt).Dur("retry_in", backoff).
			Time("give_up_at", deadline).Msg("database not reachable; retrying")
		select {
		case <-ctx.Done():
			return fmt.Errorf("storage: cannot reach database at %s (attempt %d): %w", where, attempt, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 15*time.Second)
	}
}

// createCollections creates the collections that would otherwise appear
// only on their first write, so that start-up can index them.
func (s *Store) createCollections(ctx context.Context, more []string) error {
	names := []string{permalinksCollection, settingsCollection, filesBucket + ".files", filesBucket + ".chunks", uploadsCollection, resultsCollection, resultBodiesCollection}
	for _, name := range append(names, more...) {
		err := s.db.CreateCollection(ctx, name)
		var cmdErr mongo.CommandError
		if err != nil && !(errors.As(err, &cmdErr) && cmdErr.Code == namespaceExists) {
			return fmt.Errorf("storage: create collection %s: %w", name, err)
		}
	}
	return nil
}

// namespaceExists is the server's error code for creating a collection that exists.
const namespaceExists = 48

// createIndexes creates, idempotently, what the queries need. The GridFS ones are those of the
// GridFS spec, so the driver's own bucket finds them and does not try to create others.
func (s *Store) createIndexes(ctx context.Context) error {
	specs := []struct {
		coll  string
		model mongo.IndexModel
	}{
		{filesBucket + ".files", mongo.IndexModel{Keys: bson.D{{Key: "filename", Value: int32(1)}, {Key: "uploadDate", Value: int32(1)}}}},
		{filesBucket + ".chunks", mongo.IndexModel{
			Keys:    bson.D{{Key: "files_id", Value: int32(1)}, {Key: "n", Value: int32(1)}},
			Options: options.Index().SetUnique(true),
		}},
		{filesBucket + ".files", mongo.IndexModel{Keys: bson.D{{Key: "metadata.session", Value: int32(1)}}}},
		{filesBucket + ".files", mongo.IndexModel{Keys: bson.D{{Key: "metadata.permalink", Value: int32(1)}}}},
		{resultsCollection, mongo.IndexModel{Keys: bson.D{{Key: "digest", Value: int32(1)}}}},
		{filesBucket + ".files", mongo.IndexModel{Keys: bson.D{{Key: "uploadDate", Value: int32(1)}}}},
	}
	for _, spec := range specs {
		if _, err := s.db.Collection(spec.coll).Indexes().CreateOne(ctx, spec.model); err != nil {
			return fmt.Errorf("storage: create index on %s: %w", spec.coll, err)
		}
	}
	return nil
}

func (s *Store) loadOrCreatePermalinkKey(ctx context.Context) ([]byte, error) {
	settings := s.db.Collection(settingsCollection)
	var doc struct {
		Key []byte `bson:"key"`
	}
	for range 2 {
		err := settings.FindOne(ctx, bson.D{{Key: "_id", Value: permalinkKeySetting}}).Decode(&doc)
		if err == nil {
			if len(doc.Key) < 16 {
				return nil, fmt.Errorf("storage: stored permalink key is too short (%d bytes)", len(doc.Key))
			}
			return doc.Key, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return nil, fmt.Errorf("storage: load permalink key: %w", err)
		}
		key := make([]byte, permalinkKeyBytes)
		_, _ = rand.Read(key) // never fails (crypto/rand panics rather than return an error)
		_, err = settings.InsertOne(ctx, bson.D{
			{Key: "_id", Value: permalinkKeySetting},
			{Key: "key", Value: key},
			{Key: "created", Value: time.Now().UTC()},
		})
		if err == nil {
			s.log.Info().Msg("created a new permalink key")
			return key, nil
		}
		// Another instance created it first: loop once to read theirs.
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("storage: save permalink key: %w", err)
		}
	}
	return nil, errors.New("storage: permalink key vanished while being created")
}

// Permalinks gives access to stored permalinks.
func (s *Store) Permalinks() *Permalinks { return s.permalinks }

// Results gives access to the permalinks' stored results.
func (s *Store) Results() *Results { return s.results }

// Files gives access to files uploaded from kernel directories.
func (s *Store) Files() *Files { return s.files }

// Database is the database the store keeps its collections in, for others that share it (the
// cluster registry).
func (s *Store) Database() *mongo.Database { return s.db }

// Ping checks that the database answers (for readiness probes).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, nil); err != nil {
		return fmt.Errorf("storage: ping: %w", err)
	}
	return nil
}

// Close disconnects, waiting (within ctx) for operations in flight.
func (s *Store) Close(ctx context.Context) error {
	if err := s.client.Disconnect(ctx); err != nil && !errors.Is(err, mongo.ErrClientDisconnected) {
		return fmt.Errorf("storage: disconnect: %w", err)
	}
	return nil
}

// RedactURI hides the credentials in a MongoDB URI so that it can go into logs and errors: the
// user information, and the value of every query option except a few known to be harmless
// (secrets also travel in options, e.g. authMechanismProperties=AWS_SESSION_TOKEN:...). It does
// not use net/url: a MongoDB URI may list several hosts ("h1:27017,h2:27017"), which url.Parse
// rejects. A malformed URI (what the driver refuses, and so what ends up in error messages) is
// redacted rather than shown.
func RedactURI(uri string) string {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return "(unparseable URI)"
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	hosts, pathAndQuery := rest[:end], rest[end:]
	if strings.Contains(pathAndQuery, "@") {
		// A password with an unescaped '/' or '?' puts its end here, which cannot be told from an
		// option value holding an '@': show neither.
		return scheme + "://REDACTED (an '@' follows the host list)"
	}
	if i := strings.LastIndexByte(hosts, '@'); i >= 0 {
		hosts = "REDACTED@" + hosts[i+1:]
	}
	path, query, hasQuery := strings.Cut(pathAndQuery, "?")
	if hasQuery {
		params := strings.Split(query, "&")
		for i, p := range params {
			name, _, _ := strings.Cut(p, "=")
			switch known, showValue := uriOption(name); {
			case !known:
				// Not an option name: perhaps the end of a value holding an unescaped '&'.
				params[i] = "REDACTED"
			case !showValue:
				// e.g. authMechanismProperties=AWS_SESSION_TOKEN:..., tlsCertificateKeyFilePassword=...
				params[i] = name + "=REDACTED"
			}
		}
		path += "?" + strings.Join(params, "&")
	}
	return scheme + "://" + hosts + path
}

// uriOption tells the MongoDB connection string options (name is case-insensitive) from anything
// else, and which of them have values that reveal nothing secret.
func uriOption(name string) (known, showValue bool) {
	switch strings.ToLower(name) {
	case "replicaset", "authsource", "authmechanism", "tls", "ssl", "directconnection", "readpreference",
		"loadbalanced", "retryreads", "retrywrites", "compressors":
		return true, true
	case "appname", "authmechanismproperties", "connecttimeoutms", "heartbeatfrequencyms", "journal",
		"localthresholdms", "maxconnecting", "maxidletimems", "maxpoolsize", "maxstalenessseconds",
		"minpoolsize", "proxyhost", "proxyport", "proxyusername", "proxypassword", "readconcernlevel",
		"readpreferencetags", "servermonitoringmode", "serverselectiontimeoutms",
		"serverselectiontryonce", "sockettimeoutms", "srvmaxhosts", "srvservicename",
		"tlsallowinvalidcertificates", "tlsallowinvalidhostnames", "tlscafile", "tlscertificatekeyfile",
		"tlscertificatekeyfilepassword", "tlsdisablecertificaterevocationcheck",
		"tlsdisableocspendpointcheck", "tlsinsecure", "timeoutms", "w", "wtimeoutms",
		"zlibcompressionlevel", "waitqueuetimeoutms", "gssapiservicename":
		return true, false
	}
	return false, false
}
