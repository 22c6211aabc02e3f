package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestNotebookForAnotherInstancesKernel: in a cluster, POST /api/sessions naming a kernel
// another instance owns (JupyterLab's "use the kernel of another session", Thebe reusing a
// kernel id) makes the notebook on that instance, beside its kernel, and answers as the owner
// does; a PATCH that would move a notebook onto such a kernel is refused, saying why.
func TestNotebookForAnotherInstancesKernel(t *testing.T) {
	owner := newTestEnv(t, 1, 4, nil)
	fc := newFakeCluster()
	here := newTestEnv(t, 1, 4, func(c *Config) { c.Cluster = fc })
	var theirs kernelModel
	if resp := owner.do(http.MethodPost, "/api/kernels", "", "", &theirs); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/kernels on the owner: %d", resp.StatusCode)
	}
	fc.mu.Lock()
	fc.owners = map[string]Peer{theirs.ID: {ID: "peer", URL: owner.http.URL + "/"}}
	fc.mu.Unlock()

	body, _ := json.Marshal(map[string]any{"path": "shared.ipynb", "type": "notebook", "kernel": map[string]string{"id": theirs.ID}})
	var created map[string]any
	if resp := here.do(http.MethodPost, "/api/sessions", "application/json", string(body), &created); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/sessions for the other instance's kernel: %d %v", resp.StatusCode, created)
	}
	kernel, _ := created["kernel"].(map[string]any)
	if kernel["id"] != theirs.ID || created["path"] != "shared.ipynb" {
		t.Errorf("the session made: %v", created)
	}
	var onOwner []map[string]any
	owner.do(http.MethodGet, "/api/sessions", "", "", &onOwner)
	if len(onOwner) != 1 || onOwner[0]["id"] != created["id"] {
		t.Errorf("the owner's sessions: %v, want the one made through the other instance", onOwner)
	}
	if n := len(here.gw.notebooks.all()); n != 0 {
		t.Errorf("%d notebooks on the instance without the kernel", n)
	}

	// A notebook of this instance cannot move onto the other instance's kernel.
	var ours map[string]any
	here.do(http.MethodPost, "/api/sessions", "application/json", `{"path":"ours.ipynb","type":"notebook","kernel":{"name":"python3"}}`, &ours)
	var e apiError
	patch, _ := json.Marshal(map[string]any{"kernel": map[string]string{"id": theirs.ID}})
	if resp := here.do(http.MethodPatch, "/api/sessions/"+ours["id"].(string), "application/json", string(patch), &e); resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Message, "another instance") {
		t.Errorf("PATCH onto the other instance's kernel: %d %+v", resp.StatusCode, e)
	}
}
