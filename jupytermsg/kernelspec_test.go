package jupytermsg

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestKernelSpecSizeLimit(t *testing.T) {
	spec := `{"argv":["python3"]}`
	if _, err := ParseKernelSpec(padJSON(spec, maxKernelJSON)); err != nil {
		t.Errorf("kernel.json at the limit: %v", err)
	}
	if _, err := ParseKernelSpec(padJSON(spec, maxKernelJSON+1)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("kernel.json over the limit: %v", err)
	}
	// Discovery goes through the same check: an oversized spec is reported
	// and skipped, not read into memory as a spec.
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big", "kernel.json"), padJSON(spec, maxKernelJSON+1), 0o644); err != nil {
		t.Fatal(err)
	}
	specs, problems := FindKernelSpecs([]string{dir})
	if len(specs) != 0 || len(problems) != 1 {
		t.Errorf("oversized kernelspec: specs %v, problems %v", specs, problems)
	}
}

func TestKernelSpecDiscovery(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	write := func(dir, name, body string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "kernel.json"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(first, "python3", `{"argv":["py","-f","{connection_file}"],"display_name":"First","language":"python"}`)
	write(second, "python3", `{"argv":["other"],"display_name":"Second","language":"python"}`)
	write(second, "Sage", `{"argv":["sage","{resource_dir}/x","{connection_file}"],"display_name":"Sage","language":"sage","interrupt_mode":"message"}`)
	write(second, "broken", `{"argv":[]}`)

	specs, problems := FindKernelSpecs([]string{first, second, filepath.Join(first, "missing")})
	if len(problems) != 1 {
		t.Errorf("problems = %v, want one for the broken spec", problems)
	}
	if !reflect.DeepEqual(SortedNames(specs), []string{"python3", "sage"}) {
		t.Fatalf("names = %v", SortedNames(specs))
	}
	if specs["python3"].DisplayName != "First" {
		t.Errorf("earlier directory must win, got %q", specs["python3"].DisplayName)
	}
	sage := specs["sage"]
	if !sage.InterruptByMessage() {
		t.Error("interrupt_mode message not seen")
	}
	got := sage.Command("/run/c.json")
	want := []string{"sage", filepath.Join(second, "Sage") + "/x", "/run/c.json"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Command = %v, want %v", got, want)
	}
}

func TestKernelSpecDirsOrder(t *testing.T) {
	env := map[string]string{"JUPYTER_PATH": "/a:/b", "HOME": "/home/u"}
	got := KernelSpecDirs(func(k string) string { return env[k] })
	want := []string{"/a/kernels", "/b/kernels", "/home/u/.local/share/jupyter/kernels", "/usr/local/share/jupyter/kernels", "/usr/share/jupyter/kernels"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dirs = %v", got)
	}
}

func FuzzParseKernelSpec(f *testing.F) {
	f.Add([]byte(`{"argv":["python3","-m","ipykernel_launcher","-f","{connection_file}"],"display_name":"Python 3","language":"python"}`))
	f.Add([]byte(`{"argv":["sage"],"interrupt_mode":"message","env":{"A":"b"},"metadata":{"debugger": true}}`))
	f.Add([]byte(`{"argv":["x"],"env":{},"metadata":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKernelSpec(data)
		if err != nil {
			return
		}
		if len(data) > maxKernelJSON || len(k.Argv) == 0 {
			t.Fatalf("accepted %d bytes with argv %q", len(data), k.Argv)
		}
		switch k.InterruptMode {
		case "", "signal", "message":
		default:
			t.Fatalf("accepted interrupt_mode %q", k.InterruptMode)
		}
		if k.InterruptByMessage() != (k.InterruptMode == "message") {
			t.Fatal("InterruptByMessage disagrees with interrupt_mode")
		}
		// The spec the gateway serves (GET /api/kernelspecs) must parse
		// back to the same spec.
		out, err := json.Marshal(k)
		if err != nil {
			t.Fatalf("marshal accepted spec: %v", err)
		}
		back, err := ParseKernelSpec(out)
		if err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
		if !reflect.DeepEqual(normalSpec(t, back), normalSpec(t, k)) {
			t.Fatalf("round trip changed the spec:\n%+v\n%+v", back, k)
		}
		// Substitution replaces every placeholder and keeps the length.
		argv := Spec{Dir: "/res", KernelSpec: k}.Command("/run/c.json")
		if len(argv) != len(k.Argv) {
			t.Fatalf("Command changed argv length: %q", argv)
		}
		for i, a := range argv {
			if !strings.Contains(k.Argv[i], "{connection_file}") && !strings.Contains(k.Argv[i], "{resource_dir}") && a != k.Argv[i] {
				t.Fatalf("Command changed %q to %q", k.Argv[i], a)
			}
		}
	})
}

// normalSpec makes specs comparable: an empty env is omitted when
// marshalled, and metadata is compared as compact JSON.
func normalSpec(t *testing.T, k KernelSpec) KernelSpec {
	if len(k.Env) == 0 {
		k.Env = nil
	}
	if len(k.Metadata) > 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, k.Metadata); err != nil {
			t.Fatalf("metadata %q: %v", k.Metadata, err)
		}
		k.Metadata = b.Bytes()
	}
	return k
}
