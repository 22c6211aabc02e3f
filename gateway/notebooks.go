package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/labstack/echo/v4"
)

// notebook is jupyter_server's session: a name for a kernel.
type notebook struct {
	ID       string
	Path     string
	Name     string
	Type     string
	kernelID string
}

// Bounds of the notebook sessions: clients may create them at will.
const (
	maxNotebookField      = 4 << 10 // bytes of a path, name or type
	maxNotebooksPerKernel = 64
	maxNotebooks          = 10000
)

// notebooks holds the notebook sessions. Its methods hand out
// copies: PATCH changes an entry while other requests read it.
type notebooks struct {
	mu       sync.Mutex
	byID     map[string]*notebook
	byKernel map[string]int
}

var (
	errTooManyNotebooks = errors.New("too many notebook sessions")
	errKernelNotebooks  = errors.New("too many notebook sessions for this kernel")
)

// add records ns, or returns the live session already at its path for
// the same kind, as jupyter_server does.
func (n *notebooks) add(ns notebook) (notebook, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byID == nil {
		n.byID, n.byKernel = map[string]*notebook{}, map[string]int{}
	}
	if ns.Path != "" {
		for _, old := range n.byID {
			if old.Path == ns.Path && old.kernelID == ns.kernelID && old.Type == ns.Type {
				return *old, nil
			}
		}
	}
	if len(n.byID) >= maxNotebooks {
		return notebook{}, fmt.Errorf("%w: %d", errTooManyNotebooks, len(n.byID))
	}
	if n.byKernel[ns.kernelID] >= maxNotebooksPerKernel {
		return notebook{}, fmt.Errorf("%w: %d", errKernelNotebooks, maxNotebooksPerKernel)
	}
	stored := ns
	n.byID[ns.ID] = &stored
	n.byKernel[ns.kernelID]++
	return ns, nil
}

func (n *notebooks) get(id string) (notebook, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, ok := n.byID[id]
	if !ok {
		return notebook{}, false
	}
	return *ns, true
}

func (n *notebooks) all() []notebook {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]notebook, 0, len(n.byID))
	for _, ns := range n.byID {
		out = append(out, *ns)
	}
	return out
}

// update applies req to session id and returns the result.
func (n *notebooks) update(id string, req notebookRequest, kernelID string) (notebook, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, ok := n.byID[id]
	if !ok {
		return notebook{}, false
	}
	req.applyTo(ns)
	if ns.kernelID != kernelID {
		n.dropLocked(ns)
		ns.kernelID = kernelID
		n.byKernel[kernelID]++
	}
	return *ns, true
}

// remove forgets session id, and tells whether it was there.
func (n *notebooks) remove(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns, ok := n.byID[id]
	if ok {
		n.dropLocked(ns)
		delete(n.byID, id)
	}
	return ok
}

// has tells whether session id is here.
func (n *notebooks) has(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.byID[id]
	return ok
}

func (n *notebooks) dropLocked(ns *notebook) {
	if n.byKernel[ns.kernelID]--; n.byKernel[ns.kernelID] <= 0 {
		delete(n.byKernel, ns.kernelID)
	}
}

// dropKernel forgets the sessions of a kernel that has ended, and returns
// their ids.
func (n *notebooks) dropKernel(kernelID string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byKernel[kernelID] == 0 {
		return nil
	}
	var dropped []string
	for id, ns := range n.byID {
		if ns.kernelID == kernelID {
			delete(n.byID, id)
			dropped = append(dropped, id)
		}
	}
	delete(n.byKernel, kernelID)
	return dropped
}

type notebookRequest struct {
	Path   *string `json:"path"`
	Name   *string `json:"name"`
	Type   *string `json:"type"`
	Kernel *struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"kernel"`
}

// applyTo sets the fields the request gives.
func (r notebookRequest) applyTo(ns *notebook) {
	if r.Path != nil {
		ns.Path = *r.Path
	}
	if r.Name != nil {
		ns.Name = *r.Name
	}
	if r.Type != nil {
		ns.Type = *r.Type
	}
}

// check refuses fields no notebook needs at that size.
func (r notebookRequest) check() error {
	for what, v := range map[string]*string{"path": r.Path, "name": r.Name, "type": r.Type} {
		if v != nil && len(*v) > maxNotebookField {
			return fmt.Errorf("%s longer than %d bytes", what, maxNotebookField)
		}
	}
	return nil
}

func decodeNotebookRequest(c echo.Context) (notebookRequest, error) {
	var req notebookRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return req, fmt.Errorf("invalid JSON body: %w", err)
	}
	return req, req.check()
}
