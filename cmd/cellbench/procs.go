package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// server is a process this driver started (cellgate or Jupyter Server).
type server struct {
	name    string
	cmd     *exec.Cmd
	base    string // http://127.0.0.1:PORT/
	logPath string
	exited  chan struct{}
	started time.Time
	ready   time.Duration // process start until it answered ready
}

func startProcess(name, logPath string, cmd *exec.Cmd) (*server, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that what it starts can be signalled with
	// it; and it dies if this driver dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	s := &server{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{}), started: time.Now()}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// waitReady polls url until it answers 200, the process exits or the
// timeout passes.
func (s *server) waitReady(url string, header http.Header, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited before it was ready; log:\n%s", s.name, s.logTail())
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.ready = time.Since(s.started)
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s; log:\n%s", s.name, timeout, s.logTail())
}

func (s *server) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop sends SIGTERM (the graceful path: sessions drained, kernels
// reaped), and SIGKILLs the process group after grace.
func (s *server) stop(grace time.Duration) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-s.pid(), syscall.SIGKILL)
	<-s.exited
	return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", s.name, grace)
}

// readyzState is the pool part of cellgate's /readyz.
type readyzState struct {
	Ready bool `json:"ready"`
	Pools []struct {
		Name     string `json:"name"`
		Want     int    `json:"want"`
		Ready    int    `json:"ready"`
		Starting int    `json:"starting"`
		Leased   int    `json:"leased"`
		Waiting  int    `json:"waiting"`
		LastErr  string `json:"last_error"`
	} `json:"pools"`
}

// full reports whether every pool holds all the ready kernels it wants.
func (r readyzState) full() bool {
	for _, p := range r.Pools {
		if p.Ready < p.Want {
			return false
		}
	}
	return true
}

// --- memory of processes ---

// procInfo is one process of a tree.
type procInfo struct {
	pid, ppid int
	comm      string
	rssKiB    int64
	pssKiB    int64
}

// descendants lists every process below root (not root itself).
func descendants(root int) ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []procInfo
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			queue = append(queue, c)
			info := procInfo{pid: c, ppid: p}
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c))
			info.comm = strings.TrimSpace(string(comm))
			info.rssKiB, _ = statusKiB(c, "VmRSS:")
			info.pssKiB, _ = pssKiB(c)
			out = append(out, info)
		}
	}
	return out, nil
}

// statusKiB reads a kB field of /proc/PID/status.
func statusKiB(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// pssKiB reads the proportional set size of a process.
func pssKiB(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	_, rest, ok := bytes.Cut(data, []byte("\nPss:"))
	if !ok {
		return 0, errors.New("no Pss")
	}
	f := bytes.Fields(rest)
	if len(f) == 0 {
		return 0, errors.New("no Pss value")
	}
	return strconv.ParseInt(string(f[0]), 10, 64)
}

// cpuTime is the CPU time all threads of a process have used so far
// (/proc/PID/task/*/schedstat, nanoseconds).
func cpuTime(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total int64
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread is gone
		}
		f := strings.Fields(string(data))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return time.Duration(total), nil
}

// kernelMemory sums the memory of the kernels below a gateway: python
// processes (the kernels) and bwrap processes (their sandbox) apart.
type kernelMemory struct {
	kernels                  int
	kernelRSSKiB, kernelPSS  int64
	bwrapRSSKiB, bwrapPSSKiB int64
}

func measureKernels(gatewayPID int) (kernelMemory, error) {
	procs, err := descendants(gatewayPID)
	if err != nil {
		return kernelMemory{}, err
	}
	var m kernelMemory
	for _, p := range procs {
		switch {
		case p.comm == "bwrap":
			m.bwrapRSSKiB += p.rssKiB
			m.bwrapPSSKiB += p.pssKiB
		case strings.HasPrefix(p.comm, "python"):
			m.kernels++
			m.kernelRSSKiB += p.rssKiB
			m.kernelPSS += p.pssKiB
		}
	}
	return m, nil
}

// --- Jupyter Server ---

// startJupyterServer runs Debian's Jupyter Server with its defaults, on
// a free loopback port, with a private HOME and root directory.
func startJupyterServer(ctx context.Context, dir, token string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	home, root := filepath.Join(dir, "home"), filepath.Join(dir, "root")
	for _, d := range []string{home, root} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	args := []string{"-m", "jupyter_server", "--ServerApp.token=" + token, "--port=" + strconv.Itoa(port),
		"--ip=127.0.0.1", "--no-browser", "--ServerApp.root_dir=" + root, "--ServerApp.port_retries=0"}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-root")
	}
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", args...)
	cmd.Dir = root
	cmd.Env = scrubbedEnv("HOME="+home, "JUPYTER_CONFIG_DIR="+filepath.Join(home, ".jupyter"))
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	s, err := startProcess("jupyter-server", filepath.Join(dir, "jupyter-server.log"), cmd)
	if err != nil {
		return nil, err
	}
	s.base = fmt.Sprintf("http://127.0.0.1:%d/", port)
	h := http.Header{"Authorization": {"token " + token}}
	if err := s.waitReady(s.base+"api/status", h, 60*time.Second); err != nil {
		_ = s.stop(10 * time.Second)
		return nil, err
	}
	return s, nil
}

// scrubbedEnv is this process's environment without Jupyter and Python
// settings that would change what a server or kernel does, plus extra.
func scrubbedEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "HOME" || strings.HasPrefix(k, "JUPYTER") || strings.HasPrefix(k, "PYTHON") ||
			strings.HasPrefix(k, "PYENV") || strings.HasPrefix(k, "CELLGATE_") || strings.HasPrefix(k, "IPYTHON") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// getJSON GETs url and decodes the answer.
func getJSON(client *http.Client, url string, header http.Header, out any) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("GET %s: %d %.200s: %w", url, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode, nil
}
