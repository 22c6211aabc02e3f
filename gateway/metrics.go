package gateway

import (
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cellgate/cellgate/gateway/session"
)

// Metrics are the gateway's Prometheus series, on a registry of their own.
// Make them with NewMetrics before the pool when its first kernel starts
// should be recorded, and give them to one Server through Config.Metrics.
type Metrics struct {
	registry    *prometheus.Registry
	session     *session.Metrics
	leaseWait   *prometheus.HistogramVec
	kernelStart *prometheus.HistogramVec
	sessions    *prometheus.CounterVec
}

// NewMetrics makes the gateway's series on reg (nil: a registry of their
// own, with the Go and process collectors).
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := &Metrics{
		registry: reg,
		session:  session.NewMetrics(reg),
		leaseWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_lease_wait_seconds", Help: "Time a request waited for a kernel from the pool.", Buckets: session.Buckets(),
		}, []string{"kernel"}),
		kernelStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_kernel_start_seconds", Help: "Kernel cold start, launch to ready.", Buckets: session.Buckets(),
		}, []string{"kernel", "result"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_sessions_total", Help: "Sessions started, by API.",
		}, []string{"api"}),
	}
	reg.MustRegister(m.leaseWait, m.kernelStart, m.sessions)
	return m
}

// watch adds the series read at scrape time from the pool, the sessions
// and the permalink store.
func (m *Metrics) watch(pool Pool, sessions *registry, permalinks PermalinkStore) {
	m.registry.MustRegister(&poolCollector{pool: pool}, &sessionCollector{sessions: sessions, permalinks: permalinks})
}

func (m *Metrics) handler() echo.HandlerFunc {
	return echo.WrapHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
}

// ObserveKernelStart records a kernel start; the pool's OnStart calls it.
func (m *Metrics) ObserveKernelStart(kernelName string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.kernelStart.WithLabelValues(kernelName, result).Observe(took.Seconds())
}

// poolCollector reads the pool's state at scrape time.
type poolCollector struct{ pool Pool }

var poolDesc = prometheus.NewDesc("cellgate_pool_kernels", "Kernels per kernelspec and state.", []string{"kernel", "state"}, nil)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolDesc }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.pool.Stats() {
		for state, n := range map[string]int{"ready": st.Ready, "starting": st.Starting, "leased": st.Leased, "waiting": st.Waiting, "wanted": st.Want} {
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(n), st.Name, state)
		}
	}
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
