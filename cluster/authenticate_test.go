package cluster

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// signed is a request to the instance "owner" signed as the Forwarder signs, at time at.
func signed(t testing.TB, secret []byte, method, target string, at time.Time, to string) *http.Request {
	t.Helper()
	key, err := signingKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(method, target, nil)
	s := stamp{unix: at.Unix(), nonce: newNonce(), from: "front", to: to, client: "2001:db8::7"}
	r.Header.Set(HeaderName, s.header(key, r.Method, requestURI(r)))
	return r
}

func newAuth(t testing.TB, now func() time.Time) *Authenticator {
	a, err := NewAuthenticator(AuthConfig{Secret: testSecret, InstanceID: "owner", MaxSkew: 30 * time.Second, Now: now, ReplayCache: 64})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAuthenticate: the middleware passes plain requests through unmarked, marks valid forwarded
// ones with what they vouch for, and answers 403 (JSON) to every invalid one: wrong secret,
// altered method, path or query, stale or future timestamp, replay, signed for another instance,
// malformed, repeated header.
func TestAuthenticate(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	a := newAuth(t, clock)
	var got *Forwarded
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := ForwardedFrom(r.Context())
		if ok {
			got = &f
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	serve := func(r *http.Request) int {
		got = nil
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code == http.StatusForbidden && !strings.Contains(rec.Body.String(), `"error":"Forbidden"`) {
			t.Errorf("403 body %q", rec.Body)
		}
		return rec.Code
	}

	if code := serve(httptest.NewRequest("GET", "/kernel/k", nil)); code != http.StatusNoContent || got != nil {
		t.Fatalf("plain request: %d, marked %v", code, got)
	}
	valid := signed(t, testSecret, "GET", "/kernel/k?x=1", now, "owner")
	if code := serve(valid); code != http.StatusNoContent || got == nil {
		t.Fatalf("valid forwarded request: %d, marked %v", code, got)
	}
	if *got != (Forwarded{From: "front", Client: "2001:db8::7", At: now}) {
		t.Errorf("vouched for %+v", *got)
	}
	if code := serve(valid); code != http.StatusForbidden {
		t.Errorf("replayed request: %d, want 403", code)
	}

	altered := func(f func(r *http.Request)) *http.Request {
		r := signed(t, testSecret, "GET", "/kernel/k?x=1", now, "owner")
		f(r)
		return r
	}
	for name, r := range map[string]*http.Request{
		"wrong secret":    signed(t, []byte("another secret of enough length"), "GET", "/kernel/k", now, "owner"),
		"other method":    altered(func(r *http.Request) { r.Method = "DELETE" }),
		"other path":      altered(func(r *http.Request) { r.URL.Path = "/kernel/other" }),
		"other query":     altered(func(r *http.Request) { r.URL.RawQuery = "x=2" }),
		"stale":           signed(t, testSecret, "GET", "/kernel/k", now.Add(-31*time.Second), "owner"),
		"future":          signed(t, testSecret, "GET", "/kernel/k", now.Add(31*time.Second), "owner"),
		"for another":     signed(t, testSecret, "GET", "/kernel/k", now, "someone-else"),
		"empty":           altered(func(r *http.Request) { r.Header.Set(HeaderName, "") }),
		"garbage":         altered(func(r *http.Request) { r.Header.Set(HeaderName, "v1 t=1 n=x") }),
		"twice":           altered(func(r *http.Request) { r.Header.Add(HeaderName, r.Header.Get(HeaderName)) }),
		"other client":    altered(func(r *http.Request) { swapField(r, "c=", "c=192.0.2.66") }),
		"other forwarder": altered(func(r *http.Request) { swapField(r, "f=", "f=evil") }),
		"other nonce":     altered(func(r *http.Request) { swapField(r, "n=", "n="+newNonce()) }),
		"signature cut": altered(func(r *http.Request) {
			r.Header.Set(HeaderName, r.Header.Get(HeaderName)[:len(r.Header.Get(HeaderName))-1])
		}),
		"other version":    altered(func(r *http.Request) { r.Header.Set(HeaderName, "v2"+r.Header.Get(HeaderName)[2:]) }),
		"other timestamp":  altered(func(r *http.Request) { swapField(r, "t=", "t=1800000001") }),
		"padded timestamp": altered(func(r *http.Request) { swapField(r, "t=", "t=01800000000") }),
	} {
		if code := serve(r); code != http.StatusForbidden || got != nil {
			t.Errorf("%s: %d (marked %v), want 403", name, code, got)
		}
	}
	// Within the skew either way is fine.
	for _, d := range []time.Duration{-29 * time.Second, 29 * time.Second} {
		if code := serve(signed(t, testSecret, "GET", "/", now.Add(d), "owner")); code != http.StatusNoContent {
			t.Errorf("skew %v: %d", d, code)
		}
	}
}

// swapField replaces one field of the request's forwarding header, keeping the signature.
func swapField(r *http.Request, prefix, with string) {
	fields := strings.Split(r.Header.Get(HeaderName), " ")
	for i, f := range fields {
		if strings.HasPrefix(f, prefix) {
			fields[i] = with
		}
	}
	r.Header.Set(HeaderName, strings.Join(fields, " "))
}

func TestVerifyErrors(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newAuth(t, func() time.Time { return now })
	for _, tc := range []struct {
		r    *http.Request
		want error
	}{
		{httptest.NewRequest("GET", "/", nil), ErrNotForwarded},
		{signed(t, []byte("another secret of enough length"), "GET", "/", now, "owner"), ErrBadSignature},
		{signed(t, testSecret, "GET", "/", now.Add(time.Hour), "owner"), ErrStale},
		{signed(t, testSecret, "GET", "/", now, "other"), ErrNotForMe},
	} {
		if _, err := a.Verify(tc.r); !errors.Is(err, tc.want) {
			t.Errorf("Verify = %v, want %v", err, tc.want)
		}
	}
}

// TestNonceCacheBounded: the replay cache forgets expired nonces, and the oldest when full.
func TestNonceCacheBounded(t *testing.T) {
	c := newNonceCache(3)
	now := time.Unix(0, 0)
	exp := now.Add(time.Minute)
	for _, n := range []string{"a", "b", "c"} {
		if !c.add(n, exp, now) {
			t.Fatalf("%s refused", n)
		}
	}
	if c.add("b", exp, now) {
		t.Fatal("replay of b accepted")
	}
	c.add("d", exp, now) // full: a goes
	if len(c.expires) != 3 || !c.add("a", exp, now) {
		t.Fatalf("a not forgotten when full (%d kept)", len(c.expires))
	}
	later := exp.Add(time.Second)
	if !c.add("c", later.Add(time.Minute), later) || len(c.expires) != 1 {
		t.Fatalf("expired nonces kept: %d", len(c.expires))
	}
	if c.add("c", later.Add(time.Minute), later) {
		t.Fatal("replay of c accepted after it came again")
	}
}

// FuzzVerify: whatever the header, method and URI, Verify never panics, and accepts exactly the
// header the key signed for exactly that method and URI: no other string verifies.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	key, _ := signingKey(testSecret)
	good := stamp{unix: now.Unix(), nonce: "AAAAAAAAAAAAAAAAAAAAAA", from: "front", to: "owner", client: "192.0.2.1"}.header(key, "GET", "/kernel/k?")
	f.Add(good, "GET", "/kernel/k")
	f.Add(strings.Replace(good, "c=192.0.2.1", "c=", 1), "GET", "/kernel/k")
	f.Add("v1 t=1800000000 n=AAAAAAAAAAAAAAAAAAAAAA f=front to=owner c=::1 s="+strings.Repeat("A", 43), "POST", "/x?y")
	f.Add("v1 t= n= f= to= c= s=", "GET", "/")
	f.Add("", "GET", "/")
	f.Fuzz(func(t *testing.T, header, method, target string) {
		r, err := http.NewRequest(method, "http://owner"+target, nil)
		if err != nil || !strings.HasPrefix(target, "/") {
			return
		}
		r.Header.Set(HeaderName, header)
		a := newAuth(t, func() time.Time { return now })
		fw, err := a.Verify(r)
		if err != nil {
			return
		}
		if header != good || r.Method != "GET" || requestURI(r) != "/kernel/k?" {
			t.Fatalf("accepted %q for %s %s", header, r.Method, requestURI(r))
		}
		if fw.From != "front" || fw.Client != "192.0.2.1" {
			t.Fatalf("vouched for %+v", fw)
		}
	})
}

// FuzzParseStamp: the parser never panics and what it accepts is well formed and prints back
// identically (the signature's fields are exactly the header's).
func FuzzParseStamp(f *testing.F) {
	key, _ := signingKey(testSecret)
	f.Add(stamp{unix: 1, nonce: newNonce(), from: "a", to: "b", client: "10.0.0.1"}.header(key, "GET", "/?"))
	f.Add(stamp{unix: 1, nonce: newNonce(), from: "a.b_c-d", to: "b", client: ""}.header(key, "GET", "/?"))
	f.Add("v1 t=99999999999999999999 n=x f=a to=b c=x s=y")
	f.Fuzz(func(t *testing.T, v string) {
		s, err := parseStamp(v)
		if err != nil {
			return
		}
		if checkInstanceID(s.from) != nil || checkInstanceID(s.to) != nil || len(s.sig) != 32 || s.unix < 0 {
			t.Fatalf("accepted a malformed stamp %+v from %q", s, v)
		}
		printed := strings.Join([]string{"v1", "t=" + strconv.FormatInt(s.unix, 10), "n=" + s.nonce, "f=" + s.from, "to=" + s.to, "c=" + s.client, "s=" + b64.EncodeToString(s.sig)}, " ")
		if printed != v {
			t.Fatalf("%q parses to a stamp printed %q", v, printed)
		}
	})
}
