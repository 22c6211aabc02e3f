package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Forwarded is what a valid signature vouches for about a forwarded request.
type Forwarded struct {
	// From is the instance that forwarded it.
	From string
	// Client is the address of the client the forwarding instance served (an IP address), to be
	// used instead of the connection's peer (which is that instance) for caps and logs. Empty
	// when the forwarding instance did not know it.
	Client string
	// At is when it was forwarded (whole seconds).
	At time.Time
}

type forwardedKey struct{}

// ForwardedFrom tells whether the request of ctx came from another instance with a valid
// signature (the Authenticator's middleware put it there), and what it vouches for.
func ForwardedFrom(ctx context.Context) (Forwarded, bool) {
	f, ok := ctx.Value(forwardedKey{}).(Forwarded)
	return f, ok
}

// Why the Authenticator refuses a request.
var (
	ErrNotForwarded = errors.New("cluster: request not forwarded (no " + HeaderName + " header)")
	ErrBadSignature = errors.New("cluster: invalid signature on a forwarded request")
	ErrStale        = errors.New("cluster: forwarded request outside the allowed clock skew")
	ErrReplayed     = errors.New("cluster: forwarded request replayed")
	ErrNotForMe     = errors.New("cluster: forwarded request signed for another instance")
)

// AuthConfig configures an Authenticator.
type AuthConfig struct {
	// Secret is the cluster secret (--cluster-secret), the same on every instance; at least
	// MinSecretBytes.
	Secret []byte
	// InstanceID is this instance's id: a request signed for another instance is refused, so a
	// captured request cannot be replayed to the others.
	InstanceID string
	// MaxSkew is how far a forwarded request's timestamp may be from Now, either way. Default 30 s.
	MaxSkew time.Duration
	// Now is the clock timestamps are checked against: give Registry.Now, the database's clock
	// that the forwarding instances sign with. Default time.Now.
	Now func() time.Time
	// ReplayCache bounds the nonces remembered (those seen within 2×MaxSkew); default 65536.
	// Beyond it the oldest are forgotten first, so a replay stays possible only for a request
	// older than the last ReplayCache ones.
	ReplayCache int
	Log         zerolog.Logger
}

// Authenticator tells a valid forwarded request (trust its client address; never forward it
// again) from a plain one, and refuses a request whose forwarding header does not verify.
type Authenticator struct {
	key     []byte
	self    string
	maxSkew time.Duration
	now     func() time.Time
	log     zerolog.Logger
	seen    *nonceCache
}

// NewAuthenticator checks cfg and makes an Authenticator.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	key, err := signingKey(cfg.Secret)
	if err != nil {
		return nil, err
	}
	if err := checkInstanceID(cfg.InstanceID); err != nil {
		return nil, err
	}
	fill(&cfg.MaxSkew, 30*time.Second)
	fill(&cfg.ReplayCache, 1<<16)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Authenticator{
		key: key, self: cfg.InstanceID, maxSkew: cfg.MaxSkew, now: cfg.Now,
		log:  cfg.Log.With().Str("component", "cluster").Logger(),
		seen: newNonceCache(cfg.ReplayCache),
	}, nil
}

// Verify checks a request's forwarding header: ErrNotForwarded when it has none, another error
// when it has one that does not hold (malformed, bad signature, stale, replayed, for another
// instance), else what it vouches for. A valid header is accepted once: its nonce is remembered
// until its timestamp is out of the skew window.
func (a *Authenticator) Verify(r *http.Request) (Forwarded, error) {
	vals := r.Header.Values(HeaderName)
	switch len(vals) {
	case 0:
		return Forwarded{}, ErrNotForwarded
	case 1:
	default:
		return Forwarded{}, fmt.Errorf("%w: %d headers", errBadHeader, len(vals))
	}
	s, err := parseStamp(vals[0])
	if err != nil {
		return Forwarded{}, err
	}
	if !s.verify(a.key, r.Method, requestURI(r)) {
		return Forwarded{}, ErrBadSignature
	}
	// Checked after the signature, so that a forger learns nothing from which error he gets.
	if s.to != a.self {
		return Forwarded{}, fmt.Errorf("%w: %s, not %s", ErrNotForMe, s.to, a.self)
	}
	now := a.now()
	at := time.Unix(s.unix, 0)
	if d := now.Sub(at); d > a.maxSkew || d < -a.maxSkew {
		return Forwarded{}, fmt.Errorf("%w: signed at %s, now %s", ErrStale, at.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !a.seen.add(s.nonce, at.Add(a.maxSkew+time.Second), now) {
		return Forwarded{}, ErrReplayed
	}
	return Forwarded{From: s.from, Client: s.client, At: at}, nil
}

// Middleware lets plain requests through untouched, marks valid forwarded ones (ForwardedFrom)
// and answers the others 403 with a JSON error, as the gateway answers errors. Put it before
// anything that reads the client's address.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := a.Verify(r)
		switch {
		case errors.Is(err, ErrNotForwarded):
			next.ServeHTTP(w, r)
			return
		case err != nil:
			a.log.Warn().Err(err).Str("remote", r.RemoteAddr).Str("method", r.Method).Str("path", r.URL.Path).
				Msg("cluster: forwarded request refused")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"error":   http.StatusText(http.StatusForbidden),
				"message": "invalid " + HeaderName + " header (cluster secret or clocks differ?)",
			})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), forwardedKey{}, f)))
	})
}

// requestURI is what is signed of a request's target: its escaped path and raw query, as on the
// request line (both ends compute it alike from what was sent).
func requestURI(r *http.Request) string {
	return r.URL.EscapedPath() + "?" + r.URL.RawQuery
}

// nonceCache remembers nonces until they expire, bounded: when full, the oldest entry goes.
// Entries expire in about the order they come (the skew window is the same for all), so a ring
// in arrival order holds the expired, or when full the oldest, at its head.
type nonceCache struct {
	mu      sync.Mutex
	expires map[string]time.Time
	ring    []nonceEntry
	head, n int
}

type nonceEntry struct {
	nonce   string
	expires time.Time
}

func newNonceCache(max int) *nonceCache {
	return &nonceCache{expires: map[string]time.Time{}, ring: make([]nonceEntry, max)}
}

// add remembers nonce until expires, answering false if it is remembered already.
func (c *nonceCache) add(nonce string, expires, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp, ok := c.expires[nonce]; ok && now.Before(exp) {
		return false
	}
	for c.n > 0 && (c.n == len(c.ring) || !now.Before(c.ring[c.head].expires)) {
		old := c.ring[c.head]
		// Unless the nonce came again after expiring: then the map holds its newer entry.
		if c.expires[old.nonce].Equal(old.expires) {
			delete(c.expires, old.nonce)
		}
		c.ring[c.head] = nonceEntry{}
		c.head, c.n = (c.head+1)%len(c.ring), c.n-1
	}
	c.expires[nonce] = expires
	c.ring[(c.head+c.n)%len(c.ring)] = nonceEntry{nonce: nonce, expires: expires}
	c.n++
	return true
}
