package cluster

import (
	"maps"
	"slices"
	"time"
)

// Instance is one cellgate instance as its record in the registry describes it.
type Instance struct {
	ID string
	// URL is its advertise URL, where the others forward requests to.
	URL      string
	Started  time.Time
	Draining bool
	Load     Load
	// Heartbeat is when it last renewed its record and Expires when the record runs out
	// (both on the database's clock, Registry.Now).
	Heartbeat time.Time
	Expires   time.Time

	// epoch tells this incarnation from an earlier one with the same id: sessions are owned by
	// an incarnation, so those of a crashed process are not mistaken for its successor's.
	epoch string
}

// Load is what an instance publishes of its capacity with each heartbeat.
type Load struct {
	// Sessions is how many live sessions it holds.
	Sessions int
	// Ready is how many ready kernels it holds, per kernel name (kernelspec).
	Ready map[string]int
}

func (l Load) clone() Load {
	l.Ready = maps.Clone(l.Ready)
	return l
}

// readyFlags is which kernels the load has ready: a change of it is what placement elsewhere
// depends on, so it is published at once rather than at the next heartbeat.
func (l Load) readyFlags() []string {
	var names []string
	for k, n := range l.Ready {
		if n > 0 {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	return names
}

// Collections of the registry, in the database the Registry is given.
const (
	instancesCollection = "cluster_instances"
	sessionsCollection  = "cluster_sessions"
)

// Collections names the registry's collections, for whoever opens the database first (storage
// creates them on the embedded database, so that they get the index its lookups by _id need).
func Collections() []string { return []string{instancesCollection, sessionsCollection} }

// instanceDoc is an instance's record.
type instanceDoc struct {
	ID        string     `bson:"_id"`
	Epoch     string     `bson:"epoch"`
	URL       string     `bson:"url"`
	Started   time.Time  `bson:"started"`
	Draining  bool       `bson:"draining"`
	Sessions  int        `bson:"sessions"`
	Ready     []readyDoc `bson:"ready"`
	Heartbeat time.Time  `bson:"heartbeat"`
	Expires   time.Time  `bson:"expires"`
}

// readyDoc is one kernel name's ready count. A list, not a document keyed by kernel name: a
// kernelspec name may hold '.', which a MongoDB field name should not.
type readyDoc struct {
	Kernel string `bson:"kernel"`
	N      int    `bson:"n"`
}

func readyDocs(ready map[string]int) []readyDoc {
	docs := make([]readyDoc, 0, len(ready))
	for _, k := range slices.Sorted(maps.Keys(ready)) {
		docs = append(docs, readyDoc{Kernel: k, N: ready[k]})
	}
	return docs
}

func (d instanceDoc) instance() Instance {
	ready := make(map[string]int, len(d.Ready))
	for _, r := range d.Ready {
		ready[r.Kernel] = r.N
	}
	return Instance{
		ID: d.ID, URL: d.URL, Started: d.Started, Draining: d.Draining,
		Load:      Load{Sessions: d.Sessions, Ready: ready},
		Heartbeat: d.Heartbeat, Expires: d.Expires, epoch: d.Epoch,
	}
}

// sessionDoc is a session's record: who owns it while it lives, then a tombstone saying how it
// ended until Config.Tombstone has passed.
type sessionDoc struct {
	ID      string    `bson:"_id"`
	Owner   string    `bson:"owner"`
	Epoch   string    `bson:"epoch"`
	Addr    string    `bson:"addr,omitempty"`
	Created time.Time `bson:"created"`
	// Ended is set when the session ended; Reason says why, and OwnerDied that it ended because
	// its owner died or stopped (not by the owner's own doing).
	Ended     *time.Time `bson:"ended,omitempty"`
	Reason    string     `bson:"reason,omitempty"`
	OwnerDied bool       `bson:"owner_died,omitempty"`
}
