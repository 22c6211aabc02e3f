package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/gateway"
	"github.com/cellgate/cellgate/kernelpool"
	"github.com/cellgate/cellgate/sandbox"
	"github.com/cellgate/cellgate/storage"
)

func TestOptionPrecedence(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "cellgate.conf")
	os.WriteFile(conf, []byte("# comment\nlisten = 127.0.0.1:9000\npool = python3=3\nmax-kernels = 7\ntoken = \"fromfile\"\n"), 0o600)
	env := map[string]string{"CELLGATE_CONFIG": conf, "CELLGATE_MAX_KERNELS": "9"}
	o, err := parseOptions([]string{"--token", "fromflag"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:9000" || o.pool != "python3=3" || o.maxKernels != 9 || o.token != "fromflag" {
		t.Errorf("flag > env > file > default broken: %+v", o)
	}
	if o.dataDir != "./data" || o.leaseTimeout != 20*time.Second {
		t.Errorf("defaults: %+v", o)
	}
}

func TestOptionErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(bad, []byte("no-such-setting = 1\n"), 0o600)
	cases := map[string]struct {
		args []string
		env  map[string]string
	}{
		"bad env value":                      {nil, map[string]string{"CELLGATE_MAX_KERNELS": "many"}},
		"unknown flag":                       {[]string{"--nope"}, nil},
		"unknown in file":                    {[]string{"--config", bad}, nil},
		"missing file":                       {[]string{"--config", "/nonexistent"}, nil},
		"stray argument":                     {[]string{"extra"}, nil},
		"bad duration env":                   {nil, map[string]string{"CELLGATE_LEASE_TIMEOUT": "soon"}},
		"zero max kernels":                   {[]string{"--max-kernels", "0"}, nil},
		"huge messages":                      {[]string{"--max-message-mb", "4096"}, nil},
		"negative memory":                    {nil, map[string]string{"CELLGATE_KERNEL_MEMORY_MB": "-1"}},
		"zero memory":                        {[]string{"--kernel-memory-mb", "0"}, nil},
		"zero processes":                     {[]string{"--kernel-processes", "0"}, nil},
		"sub-second cpu":                     {[]string{"--kernel-cpu", "500ms"}, nil},
		"negative share":                     {[]string{"--kernel-cpu-share", "-1"}, nil},
		"NaN share":                          {nil, map[string]string{"CELLGATE_KERNEL_CPU_SHARE": "NaN"}},
		"zero grace":                         {[]string{"--detach-grace", "0s"}, nil},
		"negative retry":                     {[]string{"--db-connect-retry", "-1s"}, nil},
		"zero drain":                         {[]string{"--drain-timeout", "0s"}, nil},
		"negative budget":                    {[]string{"--pool-memory-mb", "-1"}, nil},
		"unknown queue":                      {nil, map[string]string{"CELLGATE_LEASE_QUEUE": "lifo"}},
		"negative message budget":            {[]string{"--kernel-message-budget-mb", "-1"}, nil},
		"message budget under the cap":       {[]string{"--kernel-message-budget-mb", "4", "--max-message-mb", "8"}, nil},
		"message budget under twice the cap": {[]string{"--kernel-message-budget-mb", "12", "--max-message-mb", "8"}, nil},
	}
	for name, c := range cases {
		if _, err := parseOptions(c.args, func(k string) string { return c.env[k] }); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParsePool(t *testing.T) {
	if got, err := parsePool(" auto "); got != nil || err != nil {
		t.Errorf(`parsePool("auto") = %v, %v: want nil (kernelpool.AutoReady)`, got, err)
	}
	if got, err := parsePool(""); got == nil || len(got) != 0 || err != nil {
		t.Errorf(`parsePool("") = %v, %v: want no kernel ready`, got, err)
	}
	got, err := parsePool("python3=2, SageMath=1,")
	if err != nil || !reflect.DeepEqual(got, map[string]int{"python3": 2, "sagemath": 1}) {
		t.Errorf("parsePool = %v, %v", got, err)
	}
	for _, bad := range []string{"python3", "python3=-1", "python3=x"} {
		if _, err := parsePool(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestDefaultsComeFromPackages: a setting nobody sets gives each package
// exactly its DefaultConfig, so a flag whose default drifts from its
// package's (a literal, a unit lost in a MiB conversion) fails here.
func TestDefaultsComeFromPackages(t *testing.T) {
	o, err := parseOptions(nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := o.gatewayConfig(), gateway.DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("gateway config from default flags:\n%+v\nwant gateway.DefaultConfig():\n%+v", got, want)
	}
	got, err := o.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := kernelpool.DefaultConfig()
	if got.Kernel.Warmup == nil {
		t.Error("kernel config from default flags has no warm-up")
	}
	// Functions never compare equal; the warm-up is not a setting.
	got.Kernel.Warmup, want.Kernel.Warmup = nil, nil
	// The message budget is made for the process (the package has none
	// to share): its size is the setting.
	if got.Kernel.MessageBudget == nil || got.Kernel.MessageBudget.Limit() != kernelpool.DefaultMessageBudgetBytes {
		t.Errorf("kernel message budget from default flags: %v, want one of %d bytes", got.Kernel.MessageBudget, kernelpool.DefaultMessageBudgetBytes)
	}
	got.Kernel.MessageBudget = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pool config from default flags:\n%+v\nwant kernelpool.DefaultConfig():\n%+v", got, want)
	}
	if got, want := o.sandboxConfig(), sandbox.DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("sandbox config from default flags:\n%+v\nwant sandbox.DefaultConfig():\n%+v", got, want)
	}
	// cmd builds storage's config with its wiring (storage.go); the two
	// settings it takes from flags are checked here.
	if st := storage.DefaultConfig(); o.database != st.Database || o.dbConnectRetry != st.ConnectRetry {
		t.Errorf("--database %q, --db-connect-retry %v; storage.DefaultConfig() says %q, %v", o.database, o.dbConnectRetry, st.Database, st.ConnectRetry)
	}
	// One cap on a message, whichever side it comes from.
	if gw, kp := gateway.DefaultConfig().MaxMessageBytes, kernelpool.DefaultConfig().Kernel.MaxMessageBytes; gw != kernelpool.DefaultMaxMessageBytes || kp != kernelpool.DefaultMaxMessageBytes {
		t.Errorf("message cap: gateway %d, kernelpool %d, want both kernelpool.DefaultMaxMessageBytes (%d)", gw, kp, kernelpool.DefaultMaxMessageBytes)
	}
}

// --max-kernels-per-address follows --max-kernels (a quarter, at least
// one) unless it is set.
func TestPerAddressShareFollowsMaxKernels(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{nil, 4},
		{[]string{"--max-kernels", "40"}, 10},
		{[]string{"--max-kernels", "2"}, 1},
		{[]string{"--max-kernels", "40", "--max-kernels-per-address", "3"}, 3},
	} {
		o, err := parseOptions(c.args, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		if got := o.gatewayConfig().MaxKernelsPerAddr; got != c.want {
			t.Errorf("%v: %d kernels per address, want %d", c.args, got, c.want)
		}
	}
	if _, err := parseOptions([]string{"--max-kernels-per-address", "-1"}, func(string) string { return "" }); err == nil {
		t.Error("a negative --max-kernels-per-address was accepted")
	}
}

// TestEveryOptionIsASetting: each field of options is bound by one row of
// the table, so none is set by a flag that --help and the README miss.
func TestEveryOptionIsASetting(t *testing.T) {
	var o options
	table := settings(&o)
	if n := reflect.TypeFor[options]().NumField(); len(table) != n {
		t.Errorf("%d settings for %d options", len(table), n)
	}
	fs := newFlagSet(&o) // panics on a name defined twice
	bound := map[uintptr]string{}
	fs.VisitAll(func(f *flag.Flag) {
		p := reflect.ValueOf(f.Value).Pointer()
		if other, ok := bound[p]; ok {
			t.Errorf("--%s and --%s set the same option", f.Name, other)
		}
		bound[p] = f.Name
	})
	for _, s := range table {
		if s.help == "" || strings.Count(s.help, "`")%2 != 0 {
			t.Errorf("--%s: help %q is empty or has an unpaired backtick", s.name, s.help)
		}
	}
}

func TestHelpShowsEverySetting(t *testing.T) {
	var buf bytes.Buffer
	usage(&buf)
	help := buf.String()
	var o options
	last := 0
	for _, s := range settings(&o) {
		i := strings.Index(help, "\n  --"+s.name+" ")
		if i < 0 {
			i = strings.Index(help, "\n  --"+s.name+"\n") // a bool takes no value
		}
		if i < last {
			t.Errorf("--%s missing or out of the table's order in --help", s.name)
			continue
		}
		last = i
		entry, _, _ := strings.Cut(help[i+1:], "[$")
		if s.def != "" && s.def != "false" && !strings.Contains(entry, fmt.Sprintf("(default %q)", s.def)) {
			t.Errorf("--%s: help entry %q does not show the default %q", s.name, entry, s.def)
		}
		if !strings.Contains(help[i:], "[$"+envName(s.name)+"]") {
			t.Errorf("--%s: no $%s", s.name, envName(s.name))
		}
	}
	for _, want := range []string{`--max-message-mb int`, `(default "16")`, `--kernel-memory-mb int`, `(default "4096")`, `--max-timeout duration`, `(default "1h")`, `--trust-proxy` + "\n"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "`") {
		t.Error("--help shows markdown backticks")
	}
}

var update = flag.Bool("update", false, "rewrite README.md's options table from the settings table")

const (
	readmePath   = "../../README.md"
	optionsBegin = "<!-- options:begin: generated from cmd/cellgate/config.go by: go test ./cmd/cellgate -run TestREADMEOptions -update (do not edit by hand) -->\n"
	optionsEnd   = "<!-- options:end -->\n"
)

// TestREADMEOptions: README.md's options table is the settings table.
func TestREADMEOptions(t *testing.T) {
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	before, rest, ok := strings.Cut(readme, optionsBegin)
	if !ok {
		t.Fatalf("README.md has no line %q", optionsBegin)
	}
	current, after, ok := strings.Cut(rest, optionsEnd)
	if !ok {
		t.Fatalf("README.md has no line %q after the options table", optionsEnd)
	}
	want := optionsMarkdown()
	if current == want {
		return
	}
	if *update {
		if err := os.WriteFile(readmePath, []byte(before+optionsBegin+want+optionsEnd+after), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("rewrote README.md's options table")
		return
	}
	have, gen := strings.Split(current, "\n"), strings.Split(want, "\n")
	i := 0
	for i < len(have) && i < len(gen) && have[i] == gen[i] {
		i++
	}
	line := func(lines []string) string {
		if i < len(lines) {
			return lines[i]
		}
		return "(end of table)"
	}
	t.Errorf("README.md's options table differs from the settings in cmd/cellgate/config.go, first at table line %d:\n README.md: %s\n generated: %s\n"+
		"Change the setting in config.go (or its package's DefaultConfig), not README.md, then rewrite the table with:\n"+
		"  go test ./cmd/cellgate -run TestREADMEOptions -update", i+1, line(have), line(gen))
}

// --fork-max reaches the sandbox (which refuses one that is not positive).
func TestForkMax(t *testing.T) {
	o, err := parseOptions([]string{"--fork-max", "7"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got := o.sandboxConfig().ForkMax; got != 7 {
		t.Fatalf("--fork-max 7 gave the sandbox ForkMax %d", got)
	}
}

// --kernel-cpu-share reaches the sandbox, in cores, fractions too.
func TestKernelCPUShare(t *testing.T) {
	o, err := parseOptions(nil, func(k string) string {
		return map[string]string{"CELLGATE_KERNEL_CPU_SHARE": "0.5"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := o.sandboxConfig().CPUShare; got != 0.5 {
		t.Fatalf("CELLGATE_KERNEL_CPU_SHARE=0.5 gave the sandbox CPUShare %v", got)
	}
}

// --kernel-message-budget-mb makes the one budget the pool's kernels
// share: its default, a size, and 0 (counted, no bound).
func TestKernelMessageBudgetOption(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int64
	}{
		{nil, kernelpool.DefaultMessageBudgetBytes},
		{[]string{"--kernel-message-budget-mb", "64"}, 64 << 20},
		{[]string{"--kernel-message-budget-mb", "0"}, 0},
	} {
		o, err := parseOptions(c.args, func(string) string { return "" })
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		cfg, err := o.poolConfig()
		if err != nil {
			t.Fatal(err)
		}
		if b := cfg.Kernel.MessageBudget; b == nil || b.Limit() != c.want {
			t.Errorf("%v: budget %v, want one of %d bytes", c.args, b, c.want)
		}
	}
}
