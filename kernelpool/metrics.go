package kernelpool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cellgate/cellgate/sandbox"
)

// metrics are the pool's own series: kernel starts and lease waits as
// they happen, and the kernels per state and the queues, read at scrape
// time.
type metrics struct {
	starts  *prometheus.HistogramVec
	waits   *prometheus.HistogramVec
	refusal *prometheus.CounterVec
}

var (
	poolKernelsDesc = prometheus.NewDesc("cellgate_pool_kernels",
		"Kernels per kernelspec and state (ready, starting, leased; waiting: leases queued for a kernel; wanted: the floor, --pool; target: the ready kernels the elastic pool aims at now).",
		[]string{"kernel", "state"}, nil)
	poolDemandDesc = prometheus.NewDesc("cellgate_pool_demand",
		"Ready kernels the leases of the last demand window would have needed at once.", []string{"kernel"}, nil)
	poolMemoryDesc = prometheus.NewDesc("cellgate_pool_kernel_memory_bytes",
		"What a ready kernel is reckoned to cost against the pool's memory budget: the mean PSS of the latest ready kernels measured.", []string{"kernel"}, nil)
	queueLengthDesc = prometheus.NewDesc("cellgate_lease_queue_length",
		"Leases waiting for a kernel, per kernelspec.", []string{"kernel"}, nil)
	queueOldestDesc = prometheus.NewDesc("cellgate_lease_queue_oldest_wait_seconds",
		"How long the longest-waiting lease has waited so far.", []string{"kernel"}, nil)
	queueEstimateDesc = prometheus.NewDesc("cellgate_lease_queue_estimated_wait_seconds",
		"What a lease joining the back of the queue now would wait at least, if starts go as fast as the quickest recent one (0 with a kernel ready).", []string{"kernel"}, nil)
)

// newMetrics registers the pool's series with reg; nil registers none.
func newMetrics(reg prometheus.Registerer, p *Pool) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		starts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cellgate_kernel_start_seconds", Help: "Kernel cold start, launch to ready.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kernel", "result"}),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cellgate_lease_queue_wait_seconds",
			Help:    "Time a lease waited in the pool's queue (0: a kernel was ready); result served, or gave_up at its deadline.",
			Buckets: []float64{0, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"kernel", "result"}),
		refusal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cellgate_lease_refused_total",
			Help: "Leases refused at once because the queue's expected wait exceeded their deadline (the gateway answers 503 with Retry-After).",
		}, []string{"kernel"}),
	}
	reg.MustRegister(m.starts, m.waits, m.refusal, stateCollector{p})
	if lister, ok := p.cfg.Kernel.Launcher.(templateLister); ok {
		reg.MustRegister(templateCollector{lister})
	}
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

func (m *metrics) waited(kernelName, result string, took time.Duration) {
	if m == nil {
		return
	}
	m.waits.WithLabelValues(kernelName, result).Observe(took.Seconds())
}

func (m *metrics) refused(kernelName string) {
	if m == nil {
		return
	}
	m.refusal.WithLabelValues(kernelName).Inc()
}

// stateCollector reads the pool's state at scrape time.
type stateCollector struct{ p *Pool }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolKernelsDesc, poolDemandDesc, poolMemoryDesc, queueLengthDesc, queueOldestDesc, queueEstimateDesc} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, st := range c.p.Stats() {
		for state, n := range map[string]int{"ready": st.Ready, "starting": st.Starting, "leased": st.Leased,
			"waiting": st.Waiting, "wanted": st.Want, "target": st.Target} {
			gauge(poolKernelsDesc, float64(n), st.Name, state)
		}
		gauge(poolDemandDesc, float64(st.Demand), st.Name)
		gauge(poolMemoryDesc, float64(st.KernelMemory), st.Name)
		gauge(queueLengthDesc, float64(st.Waiting), st.Name)
		gauge(queueOldestDesc, st.OldestWait.Seconds(), st.Name)
		gauge(queueEstimateDesc, st.EstimatedWait.Seconds(), st.Name)
	}
}

// templateLister is a launcher that forks kernels from templates
// (sandbox.Bwrap with Config.Fork).
type templateLister interface{ Templates() []sandbox.Template }

var (
	templatesDesc = prometheus.NewDesc("cellgate_fork_templates",
		"Fork-server templates alive, per kind (python, sage) and state (serving; retired: replaced, waiting for its last kernel to end).",
		[]string{"kind", "state"}, nil)
	templateKernelsDesc = prometheus.NewDesc("cellgate_fork_template_kernels",
		"Kernels running that a template forked, per kind and state of the template.", []string{"kind", "state"}, nil)
	templateForksDesc = prometheus.NewDesc("cellgate_fork_template_forks",
		"Kernels the serving template of a kind has forked so far (it is replaced after --fork-max).", []string{"kind"}, nil)
	templateMemoryDesc = prometheus.NewDesc("cellgate_fork_template_memory_bytes",
		"The templates' own proportional set size (their kernels not included), per kind and state.", []string{"kind", "state"}, nil)
)

// templateCollector reads the launcher's templates at scrape time.
type templateCollector struct{ launcher templateLister }

func (c templateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{templatesDesc, templateKernelsDesc, templateForksDesc, templateMemoryDesc} {
		ch <- d
	}
}

func (c templateCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ kind, state string }
	templates, kernels, memory := map[key]int{}, map[key]int{}, map[key]int64{}
	forks := map[string]int{}
	for _, t := range c.launcher.Templates() {
		k := key{t.Kind, "serving"}
		if t.Retired != "" {
			k.state = "retired"
		} else {
			forks[t.Kind] += t.Forks
		}
		templates[k]++
		kernels[k] += t.Kernels
		memory[k] += t.PSS
	}
	for k, n := range templates {
		ch <- prometheus.MustNewConstMetric(templatesDesc, prometheus.GaugeValue, float64(n), k.kind, k.state)
		ch <- prometheus.MustNewConstMetric(templateKernelsDesc, prometheus.GaugeValue, float64(kernels[k]), k.kind, k.state)
		ch <- prometheus.MustNewConstMetric(templateMemoryDesc, prometheus.GaugeValue, float64(memory[k]), k.kind, k.state)
	}
	for kind, n := range forks {
		ch <- prometheus.MustNewConstMetric(templateForksDesc, prometheus.GaugeValue, float64(n), kind)
	}
}
