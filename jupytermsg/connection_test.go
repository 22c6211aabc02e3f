package jupytermsg

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestConnectionEndpoints(t *testing.T) {
	tcp := ConnectionInfo{Transport: "tcp", IP: "127.0.0.1", ShellPort: 5001, IOPubPort: 5002, StdinPort: 5003, ControlPort: 5004, HBPort: 5005, SignatureScheme: "hmac-sha256", Key: "k"}
	ipc := IPCConnection("/run/k/sock", "k")
	cases := []struct {
		c    ConnectionInfo
		ch   Channel
		want string
	}{
		{tcp, Shell, "tcp://127.0.0.1:5001"},
		{tcp, Heartbeat, "tcp://127.0.0.1:5005"},
		{ipc, IOPub, "ipc:///run/k/sock-2"},
		{ipc, Control, "ipc:///run/k/sock-4"},
	}
	for _, c := range cases {
		if got := c.c.Endpoint(c.ch); got != c.want {
			t.Errorf("%s endpoint %s = %s, want %s", c.c.Transport, c.ch, got, c.want)
		}
	}
}

func TestConnectionFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kernel.json")
	want := IPCConnection("/tmp/x/s", "key")
	if err := want.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v err %v: the key must not be world-readable", st.Mode(), err)
	}
	got, err := ReadConnectionFile(path)
	if err != nil || got != want {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestConnectionFileRejects(t *testing.T) {
	for name, data := range map[string]string{
		"not json":     `{`,
		"udp":          `{"transport":"udp","ip":"x","shell_port":1,"iopub_port":1,"stdin_port":1,"control_port":1,"hb_port":1}`,
		"port zero":    `{"transport":"tcp","ip":"x","shell_port":0,"iopub_port":1,"stdin_port":1,"control_port":1,"hb_port":1}`,
		"port too big": `{"transport":"tcp","ip":"x","shell_port":70000,"iopub_port":1,"stdin_port":1,"control_port":1,"hb_port":1}`,
		"md5":          `{"transport":"tcp","ip":"x","shell_port":1,"iopub_port":1,"stdin_port":1,"control_port":1,"hb_port":1,"signature_scheme":"hmac-md5"}`,
		"no ip":        `{"transport":"tcp","shell_port":1,"iopub_port":1,"stdin_port":1,"control_port":1,"hb_port":1}`,
	} {
		if _, err := ParseConnectionInfo([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseConnectionInfo(f *testing.F) {
	f.Add([]byte(`{"transport":"tcp","ip":"127.0.0.1","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"signature_scheme":"hmac-sha256","key":"k"}`))
	f.Add([]byte(`{"transport":"ipc","ip":"/tmp/s"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConnectionInfo(data)
		if err != nil {
			return
		}
		for _, ch := range []Channel{Shell, IOPub, Stdin, Control, Heartbeat} {
			if c.Endpoint(ch) == "" {
				t.Fatal("valid connection info without endpoint")
			}
		}
	})
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
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKernelSpec(data)
		if err == nil && len(k.Argv) == 0 {
			t.Fatal("accepted a spec without argv")
		}
	})
}
