package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Config configures a Registry. Start from DefaultConfig; zero fields take its values too.
type Config struct {
	// InstanceID names this instance in the registry, in logs and in the signatures of forwarded
	// requests: 1 to 64 of [A-Za-z0-9._-]. Empty: the host name and a random suffix, which is
	// unique per process; a fixed id (e.g. the host name when one instance runs per machine) lets
	// a restarted instance take over the records of its crashed predecessor at once (same id and
	// AdvertiseURL) instead of waiting out their expiry.
	InstanceID string

	// AdvertiseURL is where the other instances reach this one (http or https, no query), e.g.
	// http://10.0.0.5:8888/. It must reach this instance directly, not through the balancer.
	AdvertiseURL string

	// Heartbeat is how often the instance renews its record, publishes its load, reads the
	// others' records and sweeps the dead. Default 1 s.
	Heartbeat time.Duration

	// Expiry is how long a record lives without renewal: an instance silent this long is dead to
	// the others, and its sessions end. At least 2 heartbeats (Open refuses less). Default 5 s.
	Expiry time.Duration

	// Tombstone is how long an ended session's record is kept, so that every instance answers it
	// as ended (with its reason) rather than unknown. Default 5 min, as the gateway's own.
	Tombstone time.Duration

	// OwnerCacheSize bounds the owner lookups remembered; OwnerCacheTTL is how long a found owner
	// (or ended session) is remembered and NegativeCacheTTL an unknown session id. Defaults 4096,
	// 10 s and 1 s.
	OwnerCacheSize   int
	OwnerCacheTTL    time.Duration
	NegativeCacheTTL time.Duration

	// OnLost is called when this instance finds that the others declared it dead (its record was
	// swept after it missed its heartbeats: a long pause, or a database it could not reach while
	// the others could). Their clients have been told that its sessions ended, so it must end
	// them too before it serves again: the registry refuses claims until OnLost returns, then
	// registers the instance anew. It runs on the heartbeat goroutine, with a context that ends
	// at Close. Nil: only logged.
	OnLost func(ctx context.Context)

	Log zerolog.Logger
}

// DefaultConfig is the settings Open uses for what is left zero: the one place each default
// lives. It names no instance id and no advertise URL: those are each instance's own.
func DefaultConfig() Config {
	return Config{
		Heartbeat:        time.Second,
		Expiry:           5 * time.Second,
		Tombstone:        5 * time.Minute,
		OwnerCacheSize:   4096,
		OwnerCacheTTL:    10 * time.Second,
		NegativeCacheTTL: time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig and checks the rest.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	fill(&c.Heartbeat, d.Heartbeat)
	fill(&c.Expiry, d.Expiry)
	fill(&c.Tombstone, d.Tombstone)
	fill(&c.OwnerCacheSize, d.OwnerCacheSize)
	fill(&c.OwnerCacheTTL, d.OwnerCacheTTL)
	fill(&c.NegativeCacheTTL, d.NegativeCacheTTL)
	if c.Expiry < 2*c.Heartbeat {
		// One late heartbeat must not kill an instance.
		return c, fmt.Errorf("cluster: expiry %v is less than two heartbeats (%v)", c.Expiry, c.Heartbeat)
	}
	if c.InstanceID == "" {
		c.InstanceID = defaultInstanceID()
	}
	if err := checkInstanceID(c.InstanceID); err != nil {
		return c, err
	}
	if _, err := parseAdvertiseURL(c.AdvertiseURL); err != nil {
		return c, err
	}
	return c, nil
}

// fill sets *v to d unless it is positive: no count or duration here means anything at zero or
// below.
func fill[T ~int | ~int64](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

const maxInstanceID = 64

// checkInstanceID accepts 1 to 64 of [A-Za-z0-9._-]: ids travel in a space-separated header
// (signature.go) and in logs, so they may hold nothing to escape.
func checkInstanceID(id string) error {
	if id == "" || len(id) > maxInstanceID {
		return fmt.Errorf("cluster: instance id %q: want 1 to %d characters", id, maxInstanceID)
	}
	for i := 0; i < len(id); i++ {
		if !idByte(id[i]) {
			return fmt.Errorf("cluster: instance id %q: only letters, digits, '.', '_' and '-' are allowed", id)
		}
	}
	return nil
}

func idByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-'
}

// defaultInstanceID is the host name (cut to what checkInstanceID accepts) and 6 random hex
// digits.
func defaultInstanceID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r < 0x80 && idByte(byte(r)) {
			return r
		}
		return '-'
	}, host)
	host = strings.Trim(host, "-")
	if len(host) > maxInstanceID-7 {
		host = host[:maxInstanceID-7]
	}
	if host == "" {
		host = "cellgate"
	}
	return host + "-" + randomHex(3)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return hex.EncodeToString(b)
}

// parseAdvertiseURL accepts an absolute http or https URL without query, user or fragment.
func parseAdvertiseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("cluster: empty advertise URL (the address other instances reach this one at)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("cluster: advertise URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("cluster: advertise URL %q: want http(s)://host:port/ with at most a path", s)
	}
	return u, nil
}
