package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/cellgate/cellgate/cluster"
	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/storage"
)

// clusterNode is this instance's membership of a cluster (--advertise-url): the registry, the
// Forwarder and the Authenticator, adapted to what the gateway asks (gateway.Cluster).
type clusterNode struct {
	reg  *cluster.Registry
	fwd  *cluster.Forwarder
	auth *cluster.Authenticator
}

var _ gateway.Cluster = (*clusterNode)(nil)

// openCluster opens the registry on the database storage uses. onLost is called when the others
// declared this instance dead while it lived (see cluster.Config.OnLost).
func openCluster(ctx context.Context, o options, db *storage.Store, log zerolog.Logger, onLost func(context.Context)) (*clusterNode, error) {
	cfg := cluster.DefaultConfig()
	cfg.InstanceID, cfg.AdvertiseURL = o.instanceID, o.advertiseURL
	cfg.Heartbeat, cfg.Expiry = o.clusterHeartbeat, o.clusterExpiry
	cfg.OnLost, cfg.Log = onLost, log
	reg, err := cluster.Open(ctx, db.Database(), cfg)
	if err != nil {
		return nil, err
	}
	secret := []byte(o.clusterSecret)
	n := &clusterNode{reg: reg}
	if n.auth, err = cluster.NewAuthenticator(cluster.AuthConfig{Secret: secret, InstanceID: reg.ID(), Now: reg.Now, Log: log}); err != nil {
		return nil, err
	}
	if n.fwd, err = cluster.NewForwarder(cluster.ForwarderConfig{Secret: secret, InstanceID: reg.ID(), Now: reg.Now, Log: log}); err != nil {
		return nil, err
	}
	return n, nil
}

// close leaves the cluster (after the drain) and closes the forwarder's connections.
func (n *clusterNode) close(ctx context.Context) error {
	n.fwd.Close()
	return n.reg.Close(ctx)
}

func (n *clusterNode) ID() string { return n.reg.ID() }

func (n *clusterNode) Middleware(next http.Handler) http.Handler { return n.auth.Middleware(next) }

func (n *clusterNode) ForwardedClient(r *http.Request) (string, bool) {
	f, ok := cluster.ForwardedFrom(r.Context())
	return f.Client, ok
}

func (n *clusterNode) Locate(ctx context.Context, sessionID string) (gateway.Location, error) {
	owner, err := n.reg.Owner(ctx, sessionID)
	var ended *cluster.EndedError
	switch {
	case errors.As(err, &ended):
		return gateway.Location{Ended: true, Reason: endedReason(ended)}, nil
	case errors.Is(err, cluster.ErrNoOwner):
		return gateway.Location{}, nil
	case err != nil:
		return gateway.Location{}, err
	case owner.ID == n.reg.ID():
		// Ours, yet not among the gateway's sessions: it is ending here.
		return gateway.Location{}, nil
	}
	return gateway.Location{Owner: &gateway.Peer{ID: owner.ID, URL: owner.URL}}, nil
}

// endedReason is what clients of a session that ended elsewhere are told: the owner's reason,
// or that its server stopped.
func endedReason(e *cluster.EndedError) string {
	if e.OwnerDied {
		if e.Reason != "" {
			return fmt.Sprintf("the server running this kernel (%s) stopped: %s", e.Owner, e.Reason)
		}
		return fmt.Sprintf("the server running this kernel (%s) stopped", e.Owner)
	}
	return e.Reason
}

func (n *clusterNode) Forward(w http.ResponseWriter, r *http.Request, peer gateway.Peer, client string) error {
	err := n.fwd.Forward(w, r, cluster.Instance{ID: peer.ID, URL: peer.URL}, client)
	switch {
	case errors.Is(err, cluster.ErrLoop):
		return fmt.Errorf("%w: %w", gateway.ErrForwardLoop, err)
	case err != nil:
		return fmt.Errorf("%w: %w", gateway.ErrPeerUnreachable, err)
	}
	return nil
}

func (n *clusterNode) Claim(ctx context.Context, sessionID, addr string) error {
	return n.reg.ClaimSession(ctx, cluster.Claim{Session: sessionID, Addr: addr})
}

func (n *clusterNode) Release(ctx context.Context, sessionID, reason string) error {
	return n.reg.ReleaseSession(ctx, sessionID, reason)
}

func (n *clusterNode) SessionsOf(ctx context.Context, addr string) (int, error) {
	return n.reg.SessionsOf(ctx, addr)
}

func (n *clusterNode) Place(ctx context.Context, kernel string) (gateway.Peer, bool) {
	in, err := n.reg.PickPlacement(ctx, kernel)
	if err != nil {
		return gateway.Peer{}, false
	}
	return gateway.Peer{ID: in.ID, URL: in.URL}, true
}

func (n *clusterNode) SetLoad(sessions int, ready map[string]int) {
	n.reg.SetLoad(cluster.Load{Sessions: sessions, Ready: ready})
}

func (n *clusterNode) Peers(ctx context.Context) ([]gateway.Peer, error) {
	all, err := n.reg.Instances(ctx)
	if err != nil {
		return nil, err
	}
	var out []gateway.Peer
	for _, in := range all {
		if in.ID != n.reg.ID() {
			out = append(out, gateway.Peer{ID: in.ID, URL: in.URL})
		}
	}
	return out, nil
}

func (n *clusterNode) DialWebsocket(ctx context.Context, peer gateway.Peer, uri, host, client string) (*websocket.Conn, error) {
	conn, err := n.fwd.DialWebsocket(ctx, cluster.Instance{ID: peer.ID, URL: peer.URL}, uri, host, client)
	switch {
	case errors.Is(err, cluster.ErrLoop):
		return nil, fmt.Errorf("%w: %w", gateway.ErrForwardLoop, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", gateway.ErrPeerUnreachable, err)
	}
	return conn, nil
}

// loadEvery is how often the gateway's load is handed to the registry (which publishes it with
// its heartbeat, and at once when which kernels are ready changes).
const loadEvery = 250 * time.Millisecond
