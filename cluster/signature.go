package cluster

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// HeaderName is the header that carries a forwarded request's signature. A request that carries
// it was forwarded by another instance (or claims so): it is never forwarded again.
const HeaderName = "Cellgate-Forwarded"

// stamp is what the header says: when and by whom the request was forwarded, to whom, for which
// client, with a nonce that makes each forwarded request's signature unique, and the signature.
//
// The header is one line of space-separated fields in a fixed order:
//
//	v1 t=<unix seconds> n=<nonce> f=<from instance> to=<to instance> c=<client address> s=<signature>
//
// The signature is HMAC-SHA256, keyed by a key derived from the cluster secret, over the
// method, the request URI (escaped path and query, as sent) and every field before it, each
// length-prefixed so that no two different requests encode alike. The body is not signed: it
// streams (websockets, uploads), and what the signature protects is who may ask an instance to
// act for a client, not the bytes in transit (use https advertise URLs where the network
// between instances is not private).
type stamp struct {
	unix   int64
	nonce  string
	from   string
	to     string
	client string // an IP address, or empty when unknown
	sig    []byte
}

const (
	stampVersion  = "v1"
	nonceBytes    = 16
	maxHeaderLen  = 512
	sigLabel      = "cellgate-forwarded-v1"
	keyDerivLabel = "cellgate cluster forwarding key v1"
	// MinSecretBytes is the shortest cluster secret accepted: 128 bits, even if typed.
	MinSecretBytes = 16
)

var b64 = base64.RawURLEncoding

// signingKey derives the key forwarded requests are signed with from the cluster secret, so
// that the secret could key something else one day without the two uses mixing.
func signingKey(secret []byte) ([]byte, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("cluster: secret of %d bytes; at least %d are needed", len(secret), MinSecretBytes)
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(keyDerivLabel))
	return m.Sum(nil), nil
}

func newNonce() string {
	b := make([]byte, nonceBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather than return an error)
	return b64.EncodeToString(b)
}

// mac computes the signature of s for a request.
func (s stamp) mac(key []byte, method, uri string) []byte {
	m := hmac.New(sha256.New, key)
	var n [binary.MaxVarintLen64]byte
	for _, f := range []string{sigLabel, method, uri, strconv.FormatInt(s.unix, 10), s.nonce, s.from, s.to, s.client} {
		m.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
		m.Write([]byte(f))
	}
	return m.Sum(nil)
}

// header is the header value of s, signed for a request.
func (s stamp) header(key []byte, method, uri string) string {
	s.sig = s.mac(key, method, uri)
	return fmt.Sprintf("%s t=%d n=%s f=%s to=%s c=%s s=%s", stampVersion, s.unix, s.nonce, s.from, s.to, s.client, b64.EncodeToString(s.sig))
}

var errBadHeader = errors.New("cluster: malformed " + HeaderName + " header")

// parseStamp reads a header value strictly: every field present, in order, well formed. It does
// not check the signature (verify does).
func parseStamp(v string) (stamp, error) {
	if len(v) > maxHeaderLen {
		return stamp{}, fmt.Errorf("%w: %d bytes", errBadHeader, len(v))
	}
	fields := strings.Split(v, " ")
	if len(fields) != 7 || fields[0] != stampVersion {
		return stamp{}, fmt.Errorf("%w: want %q and 6 fields", errBadHeader, stampVersion)
	}
	var vals [6]string
	for i, key := range []string{"t=", "n=", "f=", "to=", "c=", "s="} {
		val, ok := strings.CutPrefix(fields[i+1], key)
		if !ok {
			return stamp{}, fmt.Errorf("%w: field %d is not %s", errBadHeader, i+1, key)
		}
		vals[i] = val
	}
	var s stamp
	var err error
	// Digits only, no leading zero: one spelling per time, as the signature covers the number.
	if !allDigits(vals[0]) || len(vals[0]) > 12 || (len(vals[0]) > 1 && vals[0][0] == '0') {
		return stamp{}, fmt.Errorf("%w: timestamp", errBadHeader)
	}
	if s.unix, err = strconv.ParseInt(vals[0], 10, 64); err != nil {
		return stamp{}, fmt.Errorf("%w: timestamp", errBadHeader)
	}
	if n, err := b64.DecodeString(vals[1]); err != nil || len(n) != nonceBytes || b64.EncodeToString(n) != vals[1] {
		return stamp{}, fmt.Errorf("%w: nonce", errBadHeader)
	}
	s.nonce = vals[1]
	if checkInstanceID(vals[2]) != nil || checkInstanceID(vals[3]) != nil {
		return stamp{}, fmt.Errorf("%w: instance id", errBadHeader)
	}
	s.from, s.to = vals[2], vals[3]
	if vals[4] != "" {
		a, err := netip.ParseAddr(vals[4])
		if err != nil || a.Zone() != "" || a.String() != vals[4] {
			return stamp{}, fmt.Errorf("%w: client address", errBadHeader)
		}
	}
	s.client = vals[4]
	if s.sig, err = b64.DecodeString(vals[5]); err != nil || len(s.sig) != sha256.Size {
		return stamp{}, fmt.Errorf("%w: signature", errBadHeader)
	}
	return s, nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// verify checks s's signature for a request, in constant time.
func (s stamp) verify(key []byte, method, uri string) bool {
	return hmac.Equal(s.sig, s.mac(key, method, uri))
}

// clientAddr is the form of a client address the header carries: a canonical IP address
// (IPv4-mapped IPv6 as IPv4, no zone), or empty when addr is not one (it is then not vouched
// for).
func clientAddr(addr string) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return ""
	}
	return a.Unmap().WithZone("").String()
}
