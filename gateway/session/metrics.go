package session

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the series sessions update. The gateway shares Errors and
// Storage for its own errors and storage calls.
type Metrics struct {
	Relayed    *prometheus.CounterVec
	Executions *prometheus.CounterVec
	Errors     *prometheus.CounterVec
	Storage    *prometheus.HistogramVec
	Clients    *prometheus.GaugeVec
}

// Buckets are the latency buckets of every cellgate histogram.
func Buckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
}

// NewMetrics makes the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_messages_total", Help: "Messages relayed, by direction and channel.",
		}, []string{"direction", "channel"}),
		Executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_executions_total", Help: "execute_requests relayed to kernels, by API.",
		}, []string{"api"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_errors_total", Help: "Errors, by kind.",
		}, []string{"kind"}),
		Storage: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_storage_seconds", Help: "Storage operations (permalink_save, permalink_lookup, file_open, upload, ping), by op.", Buckets: Buckets(),
		}, []string{"op"}),
		Clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cellgate_clients", Help: "Attached clients, by transport.",
		}, []string{"transport"}),
	}
	reg.MustRegister(m.Relayed, m.Executions, m.Errors, m.Storage, m.Clients)
	return m
}
