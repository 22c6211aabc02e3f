package gateway

import (
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cellgate/cellgate/gateway/session"
)

// NewRegistry is the registry a cellgate process serves on /metrics: the
// Go runtime's and the process's series. Each component (the pool, the
// gateway) registers its own series with it as it is made.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// metrics are the gateway's series: the sessions' own (package session)
// and those of starting and counting sessions.
type metrics struct {
	registry  *prometheus.Registry
	session   *session.Metrics
	leaseWait *prometheus.HistogramVec
	sessions  *prometheus.CounterVec
}

// newMetrics registers the gateway's series with reg, among them the
// live sessions and the permalink queue, read at scrape time; sm are the
// sessions' own, already registered.
func newMetrics(reg *prometheus.Registry, sm *session.Metrics, sessions *registry, permalinks PermalinkStore) *metrics {
	m := &metrics{
		registry: reg,
		session:  sm,
		leaseWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_lease_wait_seconds", Help: "Time a request waited for a kernel from the pool.", Buckets: session.Buckets(),
		}, []string{"kernel"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_sessions_total", Help: "Sessions started, by API.",
		}, []string{"api"}),
	}
	reg.MustRegister(m.leaseWait, m.sessions, &sessionCollector{sessions: sessions, permalinks: permalinks})
	return m
}

func (m *metrics) handler() echo.HandlerFunc {
	return echo.WrapHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
}

// sessionCollector reports live sessions and the permalink queue.
type sessionCollector struct {
	sessions   *registry
	permalinks PermalinkStore
}

var (
	sessionsDesc    = prometheus.NewDesc("cellgate_sessions", "Live sessions, by API.", []string{"api"}, nil)
	byTransportDesc = prometheus.NewDesc("cellgate_sessions_by_transport",
		"Live sessions by how their clients are attached (websocket, poll, service; none: no client now). A session with clients on two transports counts under both.",
		[]string{"transport"}, nil)
	queueDesc = prometheus.NewDesc("cellgate_permalink_queue_depth", "Permalinks waiting to be written.", nil, nil)
)

func (c *sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionsDesc
	ch <- byTransportDesc
	ch <- queueDesc
}

func (c *sessionCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[session.API]int{session.SageCell: 0, session.Jupyter: 0, session.Service: 0}
	transports := map[string]int{session.TransportWebsocket: 0, session.TransportPoll: 0, session.TransportService: 0, "none": 0}
	for _, sess := range c.sessions.all() {
		counts[sess.API()]++
		ts := sess.Transports()
		if len(ts) == 0 {
			transports["none"]++
		}
		for _, t := range ts {
			transports[t]++
		}
	}
	for api, n := range counts {
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(n), string(api))
	}
	for t, n := range transports {
		ch <- prometheus.MustNewConstMetric(byTransportDesc, prometheus.GaugeValue, float64(n), t)
	}
	if q, ok := c.permalinks.(interface{ Len() int }); ok {
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(q.Len()))
	}
}
