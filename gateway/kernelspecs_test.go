package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// GET /api/kernelspecs/{name} and the kernelspec resources answer as
// jupyter_server does (Jupyter Server as a gateway client asks for both):
// the model links its logos, the links serve the files, and nothing else
// of the spec's directory is served.
func TestKernelspecAndResources(t *testing.T) {
	// A kernelspec whose logo is over the limit, beside the installed ones.
	jupyterPath := t.TempDir()
	big := filepath.Join(jupyterPath, "kernels", "biglogo")
	if err := os.MkdirAll(big, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(big, "kernel.json"), []byte(`{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "big logo", "language": "python"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(big, "logo-64x64.png"), make([]byte, maxResourceBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(big, "logo-32x32.png"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JUPYTER_PATH", jupyterPath)
	const token = "secret-token"
	env := newTestEnv(t, 0, 2, func(c *Config) { c.Token = token })
	auth := http.Header{"Authorization": {"token " + token}}

	var all struct {
		Kernelspecs map[string]specModel `json:"kernelspecs"`
	}
	env.doWith(http.MethodGet, "/api/kernelspecs", auth, "", &all)
	py := all.Kernelspecs["python3"]
	logo := py.Resources["logo-64x64"]
	if logo != "/kernelspecs/python3/logo-64x64.png" {
		t.Fatalf("python3 resources %v", py.Resources)
	}
	var one specModel
	if r := env.doWith(http.MethodGet, "/api/kernelspecs/python3", auth, "", &one); r.StatusCode != http.StatusOK || one.Name != "python3" || one.Spec.Language != "python" || one.Resources["logo-64x64"] != logo || one.Spec.Env != nil {
		t.Errorf("GET /api/kernelspecs/python3: %d %+v", r.StatusCode, one)
	}
	var e apiError
	if r := env.doWith(http.MethodGet, "/api/kernelspecs/nope", auth, "", &e); r.StatusCode != http.StatusNotFound || !strings.Contains(e.Message, "not found") {
		t.Errorf("unknown kernelspec: %d %+v", r.StatusCode, e)
	}

	get := func(path string, h http.Header) (int, []byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, env.url(path), nil)
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.Bytes(), resp.Header
	}
	status, body, h := get(logo, auth)
	want, _ := os.ReadFile(filepath.Join(env.pool.Specs()["python3"].Dir, "logo-64x64.png"))
	if status != http.StatusOK || !bytes.Equal(body, want) || h.Get("Content-Type") != "image/png" {
		t.Errorf("GET %s: %d %d bytes %s", logo, status, len(body), h.Get("Content-Type"))
	}
	// A linked logo (Debian's SageMath) is served too.
	if sage, ok := all.Kernelspecs["sagemath"]; ok {
		if status, _, _ := get(sage.Resources["logo-64x64"], auth); status != http.StatusOK {
			t.Errorf("SageMath logo %q: %d", sage.Resources["logo-64x64"], status)
		}
	}
	for _, path := range []string{
		"/kernelspecs/python3/kernel.json",                // not a resource
		"/kernelspecs/python3/..%2Fpython3%2Fkernel.json", // out of the listing
		"/kernelspecs/nope/logo-64x64.png",
		"/kernelspecs/biglogo/logo-64x64.png", // over the limit
	} {
		if status, body, _ := get(path, auth); status != http.StatusNotFound {
			t.Errorf("GET %s: %d %.80s", path, status, body)
		}
	}
	if status, _, _ := get(logo, nil); status != http.StatusUnauthorized {
		t.Errorf("GET %s without the token: %d", logo, status)
	}
	bigModel := all.Kernelspecs["biglogo"]
	if _, listed := bigModel.Resources["logo-64x64"]; listed || bigModel.Resources["logo-32x32"] != "/kernelspecs/biglogo/logo-32x32.png" {
		t.Errorf("biglogo resources %v", bigModel.Resources)
	}
}

// Jupyter Server as a gateway client (jupyter server --gateway-url) finds
// a kernelspec by name and shows its logo, through this gateway.
func TestJupyterServerGatewayClientKernelspecs(t *testing.T) {
	const python = "/usr/bin/python3" // Debian's, with python3-jupyter-server
	if testing.Short() {
		t.Skip("starts Jupyter Server: slow; make test runs it")
	}
	if err := exec.Command(python, "-c", "import jupyter_server").Run(); err != nil {
		t.Fatalf("Jupyter Server is needed (Debian python3-jupyter-server): %v", err)
	}
	const token = "gateway-token"
	env := newTestEnv(t, 0, 2, func(c *Config) { c.Token = token })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	args := []string{"-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1", "--port=" + port,
		"--ServerApp.token=local", "--ServerApp.root_dir=" + dir,
		"--gateway-url=" + env.http.URL, "--GatewayClient.auth_token=" + token}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-root")
	}
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Env = append(os.Environ(), "HOME="+dir, "JUPYTER_CONFIG_DIR="+filepath.Join(dir, "config"),
		"JUPYTER_DATA_DIR="+filepath.Join(dir, "data"), "JUPYTER_RUNTIME_DIR="+filepath.Join(dir, "runtime"))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("jupyter server:\n%s", logs.String())
		}
	})
	base := "http://127.0.0.1:" + port
	get := func(path string) (int, []byte) {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	waitFor(t, "Jupyter Server to start", func() bool { status, _ := get("/api/status?token=local"); return status == http.StatusOK })

	status, body := get("/api/kernelspecs/python3?token=local")
	var spec specModel
	if status != http.StatusOK || json.Unmarshal(body, &spec) != nil || spec.Name != "python3" || spec.Resources["logo-64x64"] == "" {
		t.Errorf("GET /api/kernelspecs/python3 through Jupyter Server: %d %s", status, body)
	}
	want, _ := os.ReadFile(filepath.Join(env.pool.Specs()["python3"].Dir, "logo-64x64.png"))
	if status, body := get("/kernelspecs/python3/logo-64x64.png?token=local"); status != http.StatusOK || !bytes.Equal(body, want) {
		t.Errorf("the logo through Jupyter Server: %d, %d bytes (want %d)", status, len(body), len(want))
	}
	if status, body := get("/api/kernelspecs/nope?token=local"); status != http.StatusNotFound {
		t.Errorf("an unknown kernelspec through Jupyter Server: %d %s", status, body)
	}
}
