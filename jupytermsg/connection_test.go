package jupytermsg

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	f.Add([]byte(`{"transport":"ipc","ip":"/tmp/s","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"kernel_name":"x"}`))
	f.Add([]byte(`{"transport":"ipc","ip":"/tmp/s"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConnectionInfo(data)
		if err != nil {
			return
		}
		if len(data) > maxConnectionFile {
			t.Fatalf("accepted %d bytes", len(data))
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted info that does not validate: %v", err)
		}
		// What cellgate writes for a kernel must read back the same.
		path := filepath.Join(t.TempDir(), "kernel.json")
		if err := c.WriteFile(path); err != nil {
			t.Fatal(err)
		}
		back, err := ReadConnectionFile(path)
		if err != nil || back != c {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, c)
		}
		for _, ch := range []Channel{Shell, IOPub, Stdin, Control, Heartbeat} {
			port := c.Port(ch)
			want := "tcp://" + c.IP + ":" + strconv.Itoa(port)
			if c.Transport == "ipc" {
				want = "ipc://" + c.IP + "-" + strconv.Itoa(port)
			}
			if port <= 0 || port > 65535 || c.Endpoint(ch) != want {
				t.Fatalf("%s: port %d endpoint %q, want %q", ch, port, c.Endpoint(ch), want)
			}
		}
	})
}

// padJSON returns obj padded with trailing spaces to exactly n bytes.
func padJSON(obj string, n int) []byte {
	return append([]byte(obj), bytes.Repeat([]byte(" "), n-len(obj))...)
}

func TestConnectionFileSizeLimit(t *testing.T) {
	conn := `{"transport":"tcp","ip":"127.0.0.1","shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5}`
	if _, err := ParseConnectionInfo(padJSON(conn, maxConnectionFile)); err != nil {
		t.Errorf("connection file at the limit: %v", err)
	}
	if _, err := ParseConnectionInfo(padJSON(conn, maxConnectionFile+1)); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("connection file over the limit: %v", err)
	}
}
