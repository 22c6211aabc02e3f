package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
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
	if o.dataDir != "./data" || o.leaseTimeout != 10*time.Second {
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
		"bad env value":    {nil, map[string]string{"CELLGATE_MAX_KERNELS": "many"}},
		"unknown flag":     {[]string{"--nope"}, nil},
		"unknown in file":  {[]string{"--config", bad}, nil},
		"missing file":     {[]string{"--config", "/nonexistent"}, nil},
		"stray argument":   {[]string{"extra"}, nil},
		"bad duration env": {nil, map[string]string{"CELLGATE_LEASE_TIMEOUT": "soon"}},
		"zero max kernels": {[]string{"--max-kernels", "0"}, nil},
		"huge messages":    {[]string{"--max-message-mb", "4096"}, nil},
		"negative memory":  {nil, map[string]string{"CELLGATE_KERNEL_MEMORY_MB": "-1"}},
		"zero drain":       {[]string{"--drain-timeout", "0s"}, nil},
	}
	for name, c := range cases {
		if _, err := parseOptions(c.args, func(k string) string { return c.env[k] }); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParsePool(t *testing.T) {
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

func TestUnsandboxedRefusedOnPublicAddress(t *testing.T) {
	for listen, public := range map[string]bool{"127.0.0.1:8888": false, "localhost:1": false, "[::1]:1": false, "0.0.0.0:8888": true, ":8888": true, "192.0.2.1:80": true} {
		_, err := newLauncher(options{sandbox: "none", listen: listen})
		if public != (err != nil) {
			t.Errorf("%s: err = %v", listen, err)
		}
		if _, err := newLauncher(options{sandbox: "none", listen: listen, allowUnsafe: true}); err != nil {
			t.Errorf("%s forced: %v", listen, err)
		}
	}
	if _, err := newLauncher(options{sandbox: "chroot"}); err == nil || !strings.Contains(err.Error(), "bwrap or none") {
		t.Errorf("unknown sandbox: %v", err)
	}
}
