// Package cluster lets several cellgate instances that share one MongoDB serve as one: any
// instance serves any request, forwarding it (websockets included) to the instance that owns its
// session, so an ordinary round-robin balancer needs no stickiness (deploy/haproxy.cfg).
//
// # What is shared
//
// Only MongoDB, the database storage already uses, and in it two collections besides the
// permalinks and files: cluster_instances (one record per instance: id, epoch, advertise URL,
// started, draining, load, last heartbeat, expiry) and cluster_sessions (one per session: owner
// id and epoch, the client's address, created; then a tombstone: ended, reason, whether the owner
// died). There is no other shared state and no consensus protocol: every decision is one
// conditional write to a single document, which MongoDB (or FerretDB) applies atomically, and
// whatever the database says is the truth. Nothing needs a transaction, a TTL index or a partial
// index, which the embedded FerretDB lacks; expiry is swept instead (sweep.go). On the embedded
// database, lookups by _id need the index storage/embedded_index.go adds to the collections that
// exist when storage opens: cellgate serve has storage create these two first (Collections,
// storage.Config.Collections). A production cluster runs on MongoDB, a replica set.
//
// # One clock
//
// Every time written to or compared with the registry is on the database server's clock, which
// each instance estimates from hello's localTime (clock.go; Registry.Now). Hosts' clocks may
// disagree by seconds without an instance looking dead or declaring others dead. The timestamps
// of forwarded requests are signed and checked on the same clock when the gateway passes
// Registry.Now to the Forwarder and the Authenticator.
//
// # Heartbeat, expiry, death
//
// Start registers an incarnation of the instance (a random epoch under its id) and renews its
// record every Heartbeat (1 s), extending its expiry to Expiry (5 s) ahead, and publishing its
// load (sessions, ready kernels per kernel name; a change of which kernels are ready is
// published at once). With each heartbeat it reads every record into its view, and sweeps: a
// record whose expiry has passed is deleted on the condition that it is still that incarnation's
// and still expired, so a record renewed meanwhile survives; whoever deletes it, or finds it
// deleted, turns the sessions of that incarnation into tombstones ("owner died"). Every step can
// be repeated by any number of sweepers. An instance is dead from the moment its record is gone,
// and only then.
//
// An instance sweeps only after it has itself reached the database continuously for an expiry:
// after an outage every instance saw, all records have expired, and the first to reconnect
// must not sweep the others before they could renew. An instance that finds its own record gone
// at its next heartbeat was declared dead while it lived (a long pause, a partition): its
// sessions have been reported ended to their clients, so Config.OnLost must end them locally
// too; claims are refused meanwhile, and the instance then registers a new incarnation. A
// process restarted with the id and advertise URL of a crashed one takes its records over at
// once (its sessions end); with the same id and another URL it waits for them to expire.
// Close (after the drain) deletes the record at once and ends any session left.
//
// A client of a killed instance is therefore told its session ended within about an expiry and a
// heartbeat; a SIGTERMed instance drains (SetDraining: the others stop placing sessions there,
// its own sessions still get their forwarded requests until they end or the drain deadline) and
// leaves at Close.
//
// # Owners, and the owner cache
//
// The gateway claims a session (ClaimSession) before its id is given to anyone, and releases it
// (ReleaseSession, with the reason) when it ends; the record then stays a tombstone for
// Tombstone (5 min), so every instance answers the session as ended, with the owner's reason,
// as the owner's own tombstone would. Owner answers the owning instance, ErrNoOwner, or an
// *EndedError (ErrEnded; ErrOwnerDead when the owner died or stopped). A session never changes
// owner, so what a lookup found is cached (OwnerCacheTTL 10 s, NegativeCacheTTL 1 s for an unknown
// id, OwnerCacheSize 4096 entries, least recently used out first); the owner's liveness is not
// cached but checked on each call against the view, and when the view does not show it alive
// the database decides: a record renewed meanwhile means alive, a record expired is swept
// there and then, so a dead verdict given to a client is the same the database holds for
// everyone.
//
// # Placement
//
// PickPlacement chooses another instance for a new session when this one has no ready kernel
// of its kind: live, not draining, with one ready, at random in proportion to its ready count,
// counting what it hands out as taken until the next view, so a burst spreads across instances.
//
// # Forwarded traffic
//
// The Forwarder relays a request to the owner's advertise URL (plain HTTP, streamed long-polls,
// websocket upgrades), keeping the client's Host and scheme (the owner builds ws_url and file
// links from them). A call that runs CheckAfter (5 s) makes it check that the owner answers at
// all (GET /healthz, one check per owner at a time, its verdict shared): a paused or stalled
// owner still has its connections accepted, so only this finds it out, and its calls end
// (ErrUnreachable, or the client's connection cut) instead of waiting for ever. It adds the
// Cellgate-Forwarded header: a timestamp, a random nonce, the
// sending and receiving instance ids and the client's address, under an HMAC-SHA256 keyed by a
// key derived from the cluster secret (--cluster-secret, the same on every instance), over the
// method, the request URI and those fields (signature.go). The receiving instance's
// Authenticator checks the signature, that the request is meant for it, that its timestamp is
// within MaxSkew (30 s) of its clock, and that its nonce was not seen (a bounded replay cache);
// a request that fails any of these gets 403, so an instance's ports are no open proxy, and one
// without the header passes as a plain request. A valid one is marked (ForwardedFrom): the
// gateway takes its client address from it, and never forwards it again (Forward refuses with
// ErrLoop), so two instances with different views of an owner cannot bounce a request. The body
// is not signed (it streams); where the network between instances is not private, use https
// advertise URLs. DialWebsocket opens a websocket of this instance's own to another, signed the
// same way: the gateway bridges a kernel owned elsewhere on a SockJS connection with it (SockJS
// carries several kernels on one connection, so it cannot be forwarded whole).
//
// # Per-address caps across instances, and their slack
//
// A session is claimed with its client's address, and SessionsOf counts an address's live
// sessions cluster-wide, so the per-address session cap can hold across the cluster when the
// gateway checks SessionsOf plus its own starts in flight. Its slack: a start counts elsewhere
// only from its claim, after the lease (up to --lease-timeout), so starts of one address in
// flight at the same moment on k instances do not see each other. The cap can be exceeded by the
// starts the address has in flight on the other instances at once: by at most k-1 for a client
// that starts sessions one at a time, and for as long as those sessions live. Sessions of a dead
// owner count until they are swept (about an expiry). The caps kept in each instance's memory
// stay per instance: the kernel-time budget per address, the per-client (client_id) and
// per-cell-session caps, and the connection cap per address; with n instances behind a
// round-robin balancer an address can get up to n times those.
package cluster
