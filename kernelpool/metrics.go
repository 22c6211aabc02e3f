package kernelpool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the pool's own series: kernel starts as they happen, and
// the kernels per state, read at scrape time.
type metrics struct {
	starts *prometheus.HistogramVec
}

var poolKernelsDesc = prometheus.NewDesc("cellgate_pool_kernels", "Kernels per kernelspec and state.", []string{"kernel", "state"}, nil)

// newMetrics registers the pool's series with reg; nil registers none.
func newMetrics(reg prometheus.Registerer, p *Pool) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{starts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cellgate_kernel_start_seconds", Help: "Kernel cold start, launch to ready.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"kernel", "result"})}
	reg.MustRegister(m.starts, stateCollector{p})
	return m
}

func (m *metrics) started(kernelName string, took time.Duration, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.starts.WithLabelValues(kernelName, result).Observe(took.Seconds())
}

// stateCollector reads the pool's state at scrape time.
type stateCollector struct{ p *Pool }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolKernelsDesc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.p.Stats() {
		for state, n := range map[string]int{"ready": st.Ready, "starting": st.Starting, "leased": st.Leased, "waiting": st.Waiting, "wanted": st.Want} {
			ch <- prometheus.MustNewConstMetric(poolKernelsDesc, prometheus.GaugeValue, float64(n), st.Name, state)
		}
	}
}
