package cluster

import (
	"errors"
	"testing"
	"time"
)

// TestPlacement: a new session is placed only on a live, not draining other instance with a
// ready kernel of its kind, never on this one; kernels handed out count as taken until the next
// view.
func TestPlacement(t *testing.T) {
	db := startDB(t)
	ctx := ctxT(t)
	b := db.start(t, fastConfig(t, "b"))
	c := db.start(t, fastConfig(t, "c"))
	d := db.start(t, fastConfig(t, "d"))
	b.SetLoad(Load{Ready: map[string]int{"python3": 2}})
	c.SetLoad(Load{Ready: map[string]int{"python3": 5, "sagemath": 1}})
	must(t, c.SetDraining(ctx, true))
	d.SetLoad(Load{Ready: map[string]int{"python3": 0, "sagemath": 1}})
	eventually(t, 10*time.Second, "the loads to be published", func() bool {
		insts, err := b.Instances(ctx)
		must(t, err)
		return len(insts) == 3 && insts[0].Load.Ready["python3"] == 2 && insts[1].Load.Ready["python3"] == 5 && insts[2].Load.Ready["sagemath"] == 1
	})

	cfg := fastConfig(t, "a")
	cfg.Heartbeat, cfg.Expiry = time.Hour, 2*time.Hour // one view, read by Start
	a := db.start(t, cfg)
	a.SetLoad(Load{Ready: map[string]int{"python3": 4}}) // its own never count

	for range 2 {
		inst, err := a.PickPlacement(ctx, "python3")
		if err != nil || inst.ID != "b" || inst.URL != "http://127.0.0.1:1/b/" {
			t.Fatalf("PickPlacement(python3) = %+v, %v; want b", inst, err)
		}
	}
	if inst, err := a.PickPlacement(ctx, "python3"); !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("third PickPlacement(python3) = %+v, %v; want ErrNoPlacement (b's 2 taken, c draining)", inst, err)
	}
	if inst, err := a.PickPlacement(ctx, "sagemath"); err != nil || inst.ID != "d" {
		t.Fatalf("PickPlacement(sagemath) = %+v, %v; want d", inst, err)
	}
	if _, err := a.PickPlacement(ctx, "julia"); !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("PickPlacement(julia) = %v, want ErrNoPlacement", err)
	}

	// From b, with a view of its own: c's ready kernels stay out while it drains, then count.
	must(t, c.SetDraining(ctx, false))
	eventually(t, 10*time.Second, "b to place on c", func() bool {
		inst, err := b.PickPlacement(ctx, "python3")
		return err == nil && inst.ID == "c"
	})
}
