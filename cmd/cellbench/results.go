package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Row is one figure of the report: a distribution (p50, p99, …) or a
// single value, in one unit.
type Row struct {
	ID      string `json:"id"`
	Section string `json:"section"`
	Label   string `json:"label"`
	Unit    string `json:"unit"`
	// Values holds p50/p90/p99/mean/min/max/n for distributions, or
	// "value" for a single figure (and sometimes a few named parts).
	Values map[string]float64 `json:"values"`
	Target string             `json:"target,omitempty"`
	// Source says where the figure comes from: "cellbench" (this driver,
	// against a running cellgate) or "go test -bench <name>".
	Source string `json:"source"`
	Note   string `json:"note,omitempty"`
}

// Report is bench/results.json.
type Report struct {
	Generated string            `json:"generated"`
	GitCommit string            `json:"git_commit"`
	GitDirty  bool              `json:"git_dirty"`
	GoVersion string            `json:"go_version"`
	Host      map[string]string `json:"host"`
	Cellgate  map[string]string `json:"cellgate"`
	// Versions of what the bench compares against, read off this machine.
	Versions    map[string]string `json:"versions"`
	DurationSec float64           `json:"duration_seconds"`
	Rows        []Row             `json:"rows"`
	// GoBenchmarks are every line of the Go benchmarks run before the
	// driver (scripts/bench.sh), as parsed.
	GoBenchmarks []GoBench `json:"go_benchmarks"`
	Problems     []string  `json:"problems"`
}

// stats summarises samples (any unit).
type stats struct {
	n                           int
	p50, p90, p99, mean, lo, hi float64
}

func summarize(samples []float64) stats {
	if len(samples) == 0 {
		return stats{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return stats{n: len(s), p50: quantile(s, 0.50), p90: quantile(s, 0.90), p99: quantile(s, 0.99),
		mean: sum / float64(len(s)), lo: s[0], hi: s[len(s)-1]}
}

// quantile of sorted samples, nearest rank.
func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func (s stats) values() map[string]float64 {
	return map[string]float64{"n": float64(s.n), "p50": round(s.p50), "p90": round(s.p90), "p99": round(s.p99),
		"mean": round(s.mean), "min": round(s.lo), "max": round(s.hi)}
}

func round(v float64) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	digits := 4 - int(math.Floor(math.Log10(math.Abs(v))))
	p := math.Pow(10, float64(max(digits, 0)))
	return math.Round(v*p) / p
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func durationsMS(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

// recorder collects rows and problems.
type recorder struct {
	rows     []Row
	problems []string
}

func (r *recorder) dist(section, id, label, unit string, samples []float64, target, note string) stats {
	s := summarize(samples)
	if s.n == 0 {
		r.problem("%s: no samples", id)
		return s
	}
	r.rows = append(r.rows, Row{ID: id, Section: section, Label: label, Unit: unit, Values: s.values(),
		Target: target, Source: "cellbench", Note: note})
	return s
}

func (r *recorder) value(section, id, label, unit string, v float64, target, note string) {
	r.valueFrom(section, id, label, unit, v, target, note, "cellbench")
}

func (r *recorder) valueFrom(section, id, label, unit string, v float64, target, note, source string) {
	r.rows = append(r.rows, Row{ID: id, Section: section, Label: label, Unit: unit,
		Values: map[string]float64{"value": round(v)}, Target: target, Source: source, Note: note})
}

func (r *recorder) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintln(os.Stderr, "cellbench: PROBLEM:", msg)
	r.problems = append(r.problems, msg)
}

// GoBench is one result line of `go test -bench`.
type GoBench struct {
	Package string             `json:"package"`
	Name    string             `json:"name"` // without the -GOMAXPROCS suffix
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"` // unit → value, e.g. "ns/op", "MB/s", "MiB-kernel"
}

// parseGoBench reads `go test -bench` text output.
func parseGoBench(rd io.Reader) []GoBench {
	var out []GoBench
	pkg := ""
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		b := GoBench{Package: pkg, Name: name, N: n, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			b.Metrics[f[i+1]] = v
		}
		out = append(out, b)
	}
	return out
}

// goBench finds a benchmark result by package suffix and name.
func goBench(all []GoBench, pkgSuffix, name string) (GoBench, bool) {
	for _, b := range all {
		if strings.HasSuffix(b.Package, pkgSuffix) && b.Name == name {
			return b, true
		}
	}
	return GoBench{}, false
}

// formatting

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a == math.Trunc(a) && a < 1e9:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// result is a row's figures as one line of text.
func (row Row) result() string {
	v := row.Values
	if x, ok := v["value"]; ok {
		s := fmtNum(x) + " " + row.Unit
		var parts []string
		for _, k := range sortedKeys(v) {
			if k != "value" {
				parts = append(parts, k+" "+fmtNum(v[k]))
			}
		}
		if len(parts) > 0 {
			s += " (" + strings.Join(parts, ", ") + ")"
		}
		return s
	}
	return fmt.Sprintf("p50 %s · p99 %s %s (n=%d)", fmtNum(v["p50"]), fmtNum(v["p99"]), row.Unit, int(v["n"]))
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// table renders the rows as text (for the terminal) or Markdown.
func table(rows []Row, markdown bool) string {
	var b strings.Builder
	if markdown {
		b.WriteString("| figure | result | target | note |\n|---|---|---|---|\n")
	}
	section := ""
	w1, w2 := 0, 0
	for _, r := range rows {
		w1 = max(w1, len(r.Label)+2)
		w2 = max(w2, len([]rune(r.result())))
	}
	for _, r := range rows {
		if r.Section != section {
			section = r.Section
			if markdown {
				fmt.Fprintf(&b, "| **%s** | | | |\n", section)
			} else {
				fmt.Fprintf(&b, "\n%s\n", section)
			}
		}
		note := r.Note
		if markdown {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Label, r.result(), r.Target, note)
			continue
		}
		line := fmt.Sprintf("  %-*s %s%s", w1, r.Label, r.result(), strings.Repeat(" ", max(0, w2-len([]rune(r.result())))))
		if r.Target != "" {
			line += "   target: " + r.Target
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	return b.String()
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
