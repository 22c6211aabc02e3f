package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/labstack/echo/v4"
)

// Metrics are the gateway's Prometheus series, on a registry of their own.
// Make them with NewMetrics before the pool when its first kernel starts
// should be recorded, and give them to one Server through Config.Metrics.
type Metrics struct {
	registry    *prometheus.Registry
	leaseWait   *prometheus.HistogramVec
	kernelStart *prometheus.HistogramVec
	sessions    *prometheus.CounterVec
	clients     *prometheus.GaugeVec
	relayed     *prometheus.CounterVec
	executions  *prometheus.CounterVec
	errors      *prometheus.CounterVec
	storage     *prometheus.HistogramVec
}

// NewMetrics makes the gateway's series.
func NewMetrics() *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		leaseWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_lease_wait_seconds", Help: "Time a request waited for a kernel from the pool.", Buckets: buckets,
		}, []string{"kernel"}),
		kernelStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_kernel_start_seconds", Help: "Kernel cold start, launch to ready.", Buckets: buckets,
		}, []string{"kernel", "result"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_sessions_total", Help: "Sessions started, by API.",
		}, []string{"api"}),
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cellgate_clients", Help: "Attached clients, by transport.",
		}, []string{"transport"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_messages_total", Help: "Messages relayed, by direction and channel.",
		}, []string{"direction", "channel"}),
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_executions_total", Help: "execute_requests relayed to kernels, by API.",
		}, []string{"api"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_errors_total", Help: "Errors, by kind.",
		}, []string{"kind"}),
		storage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_storage_seconds", Help: "Storage operations (permalink_save, permalink_lookup, file_open, upload, ping), by op.", Buckets: buckets,
		}, []string{"op"}),
	}
	m.registry.MustRegister(m.leaseWait, m.kernelStart, m.sessions, m.clients, m.relayed, m.executions, m.errors, m.storage,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// register adds the series read from s at scrape time.
func (m *Metrics) register(s *Server) {
	m.registry.MustRegister(&poolCollector{s: s}, &sessionCollector{s: s})
}

func (m *Metrics) handler() echo.HandlerFunc {
	return echo.WrapHandler(promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
}

// ObserveKernelStart records a kernel start; the pool's OnStart calls it.
func (m *Metrics) ObserveKernelStart(spec string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.kernelStart.WithLabelValues(spec, result).Observe(took.Seconds())
}

// poolCollector reads the pool's state at scrape time.
type poolCollector struct{ s *Server }

var poolDesc = prometheus.NewDesc("cellgate_pool_kernels", "Kernels per kernelspec and state.", []string{"kernel", "state"}, nil)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolDesc }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.s.pool.Stats() {
		for state, n := range map[string]int{"ready": st.Ready, "starting": st.Starting, "leased": st.Leased, "waiting": st.Waiting, "wanted": st.Want} {
			ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(n), st.Name, state)
		}
	}
}

// sessionCollector reports live sessions and the permalink queue.
type sessionCollector struct{ s *Server }

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
	counts := map[string]int{sageCellAPI: 0, jupyterAPI: 0, serviceAPI: 0}
	transports := map[string]int{transportWebsocket: 0, transportPoll: 0, transportService: 0, "none": 0}
	c.s.mu.Lock()
	all := make([]*session, 0, len(c.s.sessions))
	for _, sess := range c.s.sessions {
		all = append(all, sess)
	}
	c.s.mu.Unlock()
	for _, sess := range all {
		counts[sess.api]++
		ts := sess.transports()
		if len(ts) == 0 {
			transports["none"]++
		}
		for _, t := range ts {
			transports[t]++
		}
	}
	for api, n := range counts {
		ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(n), api)
	}
	for t, n := range transports {
		ch <- prometheus.MustNewConstMetric(byTransportDesc, prometheus.GaugeValue, float64(n), t)
	}
	if q, ok := c.s.cfg.Storage.Permalinks.(interface{ Len() int }); ok {
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(q.Len()))
	}
}
