package sandbox

import (
	"testing"
	"time"
)

func TestNoneClose(t *testing.T) {
	t.Parallel()
	k := launchPy(t, None{}, `import time; print("ready", flush=True); time.sleep(60)`)
	k.waitFor(t, "ready", 30*time.Second)
	if err := k.p.Close(); err != nil {
		t.Fatal(err)
	}
	if k.p.Err() == nil {
		t.Error("Close did not kill the process")
	}
}
