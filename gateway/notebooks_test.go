package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// Notebook sessions are read while PATCH changes them (run with -race).
func TestNotebookSessionsConcurrentPatch(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var created map[string]any
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", `{"path":"a.ipynb","type":"notebook","kernel":{"name":"python3"}}`, &created); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/sessions: %d %v", resp.StatusCode, created)
	}
	id := created["id"].(string)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if g%2 == 0 {
					env.do(http.MethodPatch, "/api/sessions/"+id, "application/json", fmt.Sprintf(`{"path":"p%d-%d.ipynb","name":"n%d"}`, g, i, i), nil)
				} else {
					env.do(http.MethodGet, "/api/sessions/"+id, "", "", nil)
					env.do(http.MethodGet, "/api/sessions", "", "", nil)
				}
			}
		}()
	}
	wg.Wait()
	var got map[string]any
	if resp := env.do(http.MethodGet, "/api/sessions/"+id, "", "", &got); resp.StatusCode != http.StatusOK || !strings.HasSuffix(got["path"].(string), ".ipynb") {
		t.Errorf("after the patches: %d %v", resp.StatusCode, got)
	}
}

// Notebook sessions are bounded per kernel, in field size, and go with
// their kernel.
func TestNotebookSessionBounds(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var model kernelModel
	env.do(http.MethodPost, "/api/kernels", "", "", &model)
	body := func(path string) string {
		b, _ := json.Marshal(map[string]any{"path": path, "type": "notebook", "kernel": map[string]string{"id": model.ID}})
		return string(b)
	}
	var e apiError
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", body(strings.Repeat("p", maxNotebookField+1)), &e); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("over-long path: %d %+v", resp.StatusCode, e)
	}
	var first, again map[string]any
	env.do(http.MethodPost, "/api/sessions", "application/json", body("same.ipynb"), &first)
	env.do(http.MethodPost, "/api/sessions", "application/json", body("same.ipynb"), &again)
	if first["id"] == nil || first["id"] != again["id"] {
		t.Errorf("the same path and kernel gave sessions %v and %v", first["id"], again["id"])
	}
	refused := 0
	for i := range maxNotebooksPerKernel + 5 {
		resp := env.do(http.MethodPost, "/api/sessions", "application/json", body(fmt.Sprintf("n%d.ipynb", i)), nil)
		if resp.StatusCode == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused != 6 { // one slot went to same.ipynb
		t.Errorf("%d sessions refused past the per-kernel cap of %d, want 6", refused, maxNotebooksPerKernel)
	}
	env.do(http.MethodDelete, "/api/kernels/"+model.ID, "", "", nil)
	env.waitEnded(model.ID)
	if n := len(env.gw.notebooks.all()); n != 0 {
		t.Errorf("%d notebook sessions outlive their kernel", n)
	}
}

// PATCH to a new kernel moves the notebook session to it and ends the old
// one. Ending the old kernel first used to forget this notebook session
// with it: the PATCH answered 404 and left the new kernel running.
func TestNotebookSessionPatchToNewKernel(t *testing.T) {
	env := newTestEnv(t, 1, 4, nil)
	var created struct {
		ID     string      `json:"id"`
		Kernel kernelModel `json:"kernel"`
	}
	if resp := env.do(http.MethodPost, "/api/sessions", "application/json", `{"path":"a.ipynb","type":"notebook","kernel":{"name":"python3"}}`, &created); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/sessions: %d %+v", resp.StatusCode, created)
	}
	old := created.Kernel.ID
	var patched struct {
		ID     string      `json:"id"`
		Kernel kernelModel `json:"kernel"`
	}
	resp := env.do(http.MethodPatch, "/api/sessions/"+created.ID, "application/json", `{"kernel":{"name":"python3"}}`, &patched)
	if resp.StatusCode != http.StatusOK || patched.Kernel.ID == "" || patched.Kernel.ID == old {
		t.Fatalf("PATCH to a new kernel: %d %+v (old kernel %s)", resp.StatusCode, patched, old)
	}
	env.waitEnded(old)
	var got struct {
		Kernel kernelModel `json:"kernel"`
	}
	if resp := env.do(http.MethodGet, "/api/sessions/"+created.ID, "", "", &got); resp.StatusCode != http.StatusOK || got.Kernel.ID != patched.Kernel.ID {
		t.Errorf("GET after the PATCH: %d, kernel %s, want %s", resp.StatusCode, got.Kernel.ID, patched.Kernel.ID)
	}
	if env.gw.sessions.get(patched.Kernel.ID) == nil {
		t.Error("the new kernel is gone")
	}
}
