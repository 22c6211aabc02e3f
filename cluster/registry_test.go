package cluster

import (
	"slices"
	"testing"
	"time"
)

func ids(insts []Instance) []string {
	var out []string
	for _, i := range insts {
		out = append(out, i.ID)
	}
	return out
}

// TestRegistryInstancesSeeEachOther: three instances on one database list each other, with
// their URLs, and a crashed one drops out of the list once its heartbeat expired.
func TestRegistryInstancesSeeEachOther(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	b := db.start(t, fastConfig(t, "b"))
	c := db.start(t, fastConfig(t, "c"))
	ctx := ctxT(t)

	insts, err := b.Instances(ctx)
	must(t, err)
	if got := ids(insts); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("Instances = %v, want a b c", got)
	}
	if insts[0].URL != "http://127.0.0.1:1/a/" || insts[0].Started.IsZero() {
		t.Errorf("a's record = %+v", insts[0])
	}

	c.crash()
	eventually(t, 10*time.Second, "c to expire", func() bool {
		insts, err := a.Instances(ctx)
		must(t, err)
		return slices.Equal(ids(insts), []string{"a", "b"})
	})
	// And its record is swept by a survivor.
	eventually(t, 10*time.Second, "c's record to be swept", func() bool {
		n, err := a.instances.CountDocuments(ctx, map[string]string{"_id": "c"})
		must(t, err)
		return n == 0
	})
}

// TestRegistryHeartbeatKeepsAlive: an instance that heartbeats outlives many expiries.
func TestRegistryHeartbeatKeepsAlive(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	b := db.start(t, fastConfig(t, "b"))
	ctx := ctxT(t)
	first := a.Self().Heartbeat
	eventually(t, 10*time.Second, "several expiries to pass", func() bool {
		return a.Now().Sub(first) > 4*a.cfg.Expiry
	})
	insts, err := b.Instances(ctx)
	must(t, err)
	if got := ids(insts); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Instances = %v, want a b", got)
	}
	if !insts[0].Heartbeat.After(first) {
		t.Errorf("a's heartbeat %v not renewed since %v", insts[0].Heartbeat, first)
	}
}

// TestRegistryDrainingVisible: SetDraining shows in the others' lists at once, and back.
func TestRegistryDrainingVisible(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	b := db.start(t, fastConfig(t, "b"))
	ctx := ctxT(t)
	draining := func() bool {
		insts, err := b.Instances(ctx)
		must(t, err)
		for _, i := range insts {
			if i.ID == "a" {
				return i.Draining
			}
		}
		t.Fatal("a not listed")
		return false
	}
	must(t, a.SetDraining(ctx, true))
	if !draining() {
		t.Fatal("a not draining right after SetDraining(true)")
	}
	// A heartbeat does not undo it.
	hb := a.Self().Heartbeat
	eventually(t, 10*time.Second, "a heartbeat", func() bool {
		insts, err := b.Instances(ctx)
		must(t, err)
		return insts[0].Heartbeat.After(hb)
	})
	if !draining() {
		t.Fatal("a's heartbeat cleared draining")
	}
	must(t, a.SetDraining(ctx, false))
	if draining() {
		t.Fatal("a still draining after SetDraining(false)")
	}
}

// TestRegistryCloseLeavesAtOnce: Close removes the record without waiting for the expiry.
func TestRegistryCloseLeavesAtOnce(t *testing.T) {
	db := startDB(t)
	a := db.start(t, fastConfig(t, "a"))
	cfg := fastConfig(t, "b")
	cfg.Expiry = time.Hour
	b := db.start(t, cfg)
	ctx := ctxT(t)
	must(t, b.Close(ctx))
	insts, err := a.Instances(ctx)
	must(t, err)
	if got := ids(insts); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("Instances after b.Close = %v, want a", got)
	}
	if err := b.ClaimSession(ctx, Claim{Session: "s"}); err != ErrNotRunning {
		t.Errorf("ClaimSession after Close = %v, want ErrNotRunning", err)
	}
}

// TestRegistryLoadPublished: SetLoad reaches the others' records; a kernel becoming ready is
// published before the next heartbeat.
func TestRegistryLoadPublished(t *testing.T) {
	db := startDB(t)
	cfg := fastConfig(t, "a")
	cfg.Heartbeat, cfg.Expiry = time.Hour, 3*time.Hour // only the early publication can show it
	a := db.start(t, cfg)
	b := db.start(t, fastConfig(t, "b"))
	ctx := ctxT(t)
	a.SetLoad(Load{Sessions: 3, Ready: map[string]int{"python3": 2, "sage.math": 0}})
	eventually(t, 10*time.Second, "a's load to be published", func() bool {
		insts, err := b.Instances(ctx)
		must(t, err)
		return insts[0].Load.Ready["python3"] == 2 && insts[0].Load.Sessions == 3
	})
}

// TestRegistrySameIDAndURLTakesOver: a restarted instance with the id and URL of a crashed one
// registers at once and ends the old incarnation's sessions.
func TestRegistrySameIDAndURLTakesOver(t *testing.T) {
	db := startDB(t)
	b := db.start(t, fastConfig(t, "b"))
	cfg := fastConfig(t, "a")
	cfg.Expiry = time.Hour // the old record would live long
	old := db.start(t, cfg)
	ctx := ctxT(t)
	must(t, old.ClaimSession(ctx, Claim{Session: "s1"}))
	old.crash()

	start := time.Now()
	db.start(t, cfg)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("restart took %v", d)
	}
	_, err := b.Owner(ctx, "s1")
	if !errorsIs(err, ErrOwnerDead) {
		t.Fatalf("Owner of the old incarnation's session = %v, want ErrOwnerDead", err)
	}
}

// TestRegistrySameIDOtherURLWaits: an id held by a live instance elsewhere is not taken.
func TestRegistrySameIDOtherURLWaits(t *testing.T) {
	db := startDB(t)
	db.start(t, fastConfig(t, "a"))
	cfg := fastConfig(t, "a")
	cfg.AdvertiseURL = "http://127.0.0.1:2/"
	r := db.open(t, cfg)
	ctx, cancel := contextWithTimeout(t, 500*time.Millisecond)
	defer cancel()
	if err := r.Start(ctx); err == nil {
		t.Fatal("Start with the id of a live instance succeeded")
	}
}

func TestConfigChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no url", Config{InstanceID: "a"}},
		{"bad url", Config{InstanceID: "a", AdvertiseURL: "127.0.0.1:8888"}},
		{"url with query", Config{InstanceID: "a", AdvertiseURL: "http://h/?x=1"}},
		{"bad id", Config{InstanceID: "a b", AdvertiseURL: "http://h/"}},
		{"long id", Config{InstanceID: string(make([]byte, 65)), AdvertiseURL: "http://h/"}},
		{"expiry too short", Config{InstanceID: "a", AdvertiseURL: "http://h/", Heartbeat: time.Second, Expiry: time.Second}},
	} {
		if _, err := tc.cfg.withDefaults(); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	cfg, err := Config{AdvertiseURL: "http://10.0.0.5:8888/"}.withDefaults()
	must(t, err)
	if checkInstanceID(cfg.InstanceID) != nil || cfg.Heartbeat != time.Second || cfg.Expiry != 5*time.Second {
		t.Errorf("defaults: %+v", cfg)
	}
}
