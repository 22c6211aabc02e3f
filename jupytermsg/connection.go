package jupytermsg

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
)

// ConnectionInfo is the content of a kernel connection file.
type ConnectionInfo struct {
	Transport       string `json:"transport"`
	IP              string `json:"ip"`
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	SignatureScheme string `json:"signature_scheme"`
	Key             string `json:"key"`
	KernelName      string `json:"kernel_name,omitempty"`
}

// maxConnectionFile bounds what ParseConnectionInfo accepts; real files are
// a few hundred bytes.
const maxConnectionFile = 64 << 10

// ParseConnectionInfo decodes and validates a connection file.
func ParseConnectionInfo(data []byte) (ConnectionInfo, error) {
	var c ConnectionInfo
	if len(data) > maxConnectionFile {
		return c, fmt.Errorf("connection file: %d bytes, over the %d limit", len(data), maxConnectionFile)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("connection file: %w", err)
	}
	return c, c.Validate()
}

// ReadConnectionFile reads and validates a connection file.
func ReadConnectionFile(path string) (ConnectionInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ConnectionInfo{}, fmt.Errorf("read connection file: %w", err)
	}
	c, err := ParseConnectionInfo(data)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// WriteFile writes the connection file readable by its owner only, since it
// holds the signing key.
func (c ConnectionInfo) WriteFile(path string) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal connection file: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write connection file: %w", err)
	}
	return nil
}

// Validate checks the transport, the ports and the signature scheme.
func (c ConnectionInfo) Validate() error {
	switch c.Transport {
	case "tcp", "ipc":
	default:
		return fmt.Errorf("connection file: unsupported transport %q", c.Transport)
	}
	if c.IP == "" {
		return fmt.Errorf("connection file: empty ip")
	}
	for _, p := range []int{c.ShellPort, c.IOPubPort, c.StdinPort, c.ControlPort, c.HBPort} {
		if p <= 0 || p > 65535 {
			return fmt.Errorf("connection file: port %d out of range", p)
		}
	}
	if c.SignatureScheme != "" && c.SignatureScheme != "hmac-sha256" {
		return fmt.Errorf("connection file: unsupported signature scheme %q", c.SignatureScheme)
	}
	return nil
}

// Port returns the port (or ipc suffix) of channel ch.
func (c ConnectionInfo) Port(ch Channel) int {
	switch ch {
	case Shell:
		return c.ShellPort
	case IOPub:
		return c.IOPubPort
	case Stdin:
		return c.StdinPort
	case Control:
		return c.ControlPort
	case Heartbeat:
		return c.HBPort
	}
	return 0
}

// Endpoint returns the ZMQ address of channel ch. For ipc, jupyter_client
// names the socket file "<ip>-<port>".
func (c ConnectionInfo) Endpoint(ch Channel) string {
	port := strconv.Itoa(c.Port(ch))
	if c.Transport == "ipc" {
		return "ipc://" + c.IP + "-" + port
	}
	return "tcp://" + c.IP + ":" + port
}

// IPCConnection returns connection info for ipc sockets named
// "<prefix>-1" … "<prefix>-5", so a kernel needs no network at all.
func IPCConnection(prefix, key string) ConnectionInfo {
	return ConnectionInfo{
		Transport: "ipc", IP: prefix,
		ShellPort: 1, IOPubPort: 2, StdinPort: 3, ControlPort: 4, HBPort: 5,
		SignatureScheme: "hmac-sha256", Key: key,
	}
}
