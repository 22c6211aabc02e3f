package session

// maxRoutes bounds the requests whose sender a session remembers, so
// that a client sending without end cannot grow it.
const maxRoutes = 4096

// routeTable remembers which client sent each recent request, so its
// replies reach that connection whatever session its header named. It is
// a bounded FIFO: the oldest requests are forgotten first.
type routeTable struct {
	by   map[string]string
	ring []string
	next int
}

func (r *routeTable) put(msgID, client string) {
	if r.by == nil {
		r.by = map[string]string{}
	}
	if _, known := r.by[msgID]; known {
		r.by[msgID] = client
		return
	}
	if len(r.ring) < maxRoutes {
		r.ring = append(r.ring, msgID)
	} else {
		delete(r.by, r.ring[r.next])
		r.ring[r.next] = msgID
		r.next = (r.next + 1) % maxRoutes
	}
	r.by[msgID] = client
}

func (r *routeTable) get(msgID string) string {
	if msgID == "" {
		return ""
	}
	return r.by[msgID]
}
