package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Config tunes the bwrap launcher. Start from DefaultConfig and change what
// you need; every limit must be positive.
type Config struct {
	// BwrapPath is the bubblewrap binary. It must not be setuid: it runs as
	// the kernel's uid and builds the sandbox in a user namespace.
	BwrapPath string
	// PrlimitPath (util-linux) sets the rlimits inside the sandbox, just
	// before the kernel starts, so bwrap itself is not limited.
	PrlimitPath string
	// ChoomPath (util-linux) raises the OOM score of the whole sandbox, so
	// that without a memory cgroup the OOM killer picks a kernel first.
	ChoomPath string
	// KillPath is kill(1), run as a kernel's uid to sweep what is left of
	// that kernel (kill -KILL -1 reaches exactly that uid's processes).
	KillPath string
	// SetprivPath (util-linux) and CatatonitPath (catatonit) make each
	// forked kernel's pid 1: catatonit, a reaper, exec'd through setpriv
	// without capabilities (see "Forked kernels" in the package doc).
	SetprivPath, CatatonitPath string

	// UIDBase and UIDCount give the numeric uids for kernels: each live
	// kernel gets one of them as its uid and gid, so kernels can neither
	// signal nor read each other and RLIMIT_NPROC counts per kernel. No
	// passwd or group entries are needed (the sandbox gets its own
	// /etc/passwd); the range must not overlap any account or subuid range
	// (NewBwrap checks). Gateways sharing a host may share the range: they
	// coordinate through locks in StateDir.
	// The default 70000..70999 lies above Debian's useradd range
	// (UID_MAX 60000) and systemd's dynamic users (61184..65519), below
	// the subordinate ids useradd hands out (SUB_UID_MIN 100000).
	UIDBase  int
	UIDCount int

	// StateDir holds a lock file per kernel uid, and a mount point per
	// live kernel where its size-limited tmpfs is mounted. Every gateway on
	// a host should use the same one (the default): the locks are how they
	// share the uid range, and how a restarted gateway tells a crashed
	// predecessor's leftovers from another gateway's live kernels. It must
	// be root's (NewBwrap sets mode 0711: bwrap, running as a kernel's uid,
	// must pass through to reach that kernel's tmpfs), and outside the
	// directories the pool manages.
	StateDir string

	// CPUTime limits a kernel's CPU time twice: as RLIMIT_CPU of each of
	// its processes (SIGXCPU at this much, SIGKILL two seconds later), and
	// for its whole process tree, ended processes included, held by the
	// gateway's accountant (ErrCPULimit either way; see "Limits" in the
	// package comment). Whole seconds, at least one.
	CPUTime time.Duration
	// Memory limits a kernel's memory twice, in bytes: as RLIMIT_AS of each
	// of its processes (allocations beyond it fail: Python raises
	// MemoryError), and as the proportional set size of its whole process
	// tree, held by the gateway's accountant, which ends the kernel
	// (ErrMemoryLimit).
	Memory int64
	// CPUShare is how many cores a kernel's process tree may use on
	// average: one that runs ahead of it by more than a second's worth is
	// stopped (SIGSTOP) until its share has caught up. 0: no share.
	CPUShare float64
	// LimitEvery is how often the accountant samples each kernel's tree
	// (/proc): the margin by which a tree can go over Memory or CPUTime is
	// what it allocates or burns in one period.
	LimitEvery time.Duration
	// Processes is RLIMIT_NPROC: processes and threads of one kernel (its
	// uid) at a time. It also bounds fork bombs.
	Processes int
	// OpenFiles is RLIMIT_NOFILE of each kernel process.
	OpenFiles int
	// FileSize is RLIMIT_FSIZE: the largest file a kernel may write.
	FileSize int64
	// Disk is the size in bytes of the kernel's tmpfs, shared by its
	// WorkDir, RuntimeDir, /tmp, /dev/shm and home; it is RAM.
	Disk int64
	// Inodes is the number of files and directories that tmpfs holds;
	// without it, empty files would cost kernel memory without bound.
	Inodes int
	// Lifespan is the wall-clock time after which a kernel is killed,
	// whatever it does. It is a backstop behind the gateway's own session
	// limits, so it is long; a prewarmed kernel's clock starts at launch.
	Lifespan time.Duration

	// ReadOnly are host paths the sandbox sees read-only at the same place
	// (symlinks are recreated as symlinks; missing paths are skipped). The
	// default is /usr, the merged-/usr symlinks and the few /etc entries
	// Python, IPython, matplotlib and Sage read: /etc as a whole may hold
	// world-readable secrets.
	ReadOnly []string
	// Env is added to every kernel's environment (Request.Env comes after
	// it and wins). The launcher itself sets PATH, HOME, USER, LOGNAME,
	// LANG, TERM and TMPDIR; nothing of the gateway's environment leaks.
	Env []string
	// Home is the kernel's HOME inside the sandbox: a private directory on
	// its tmpfs, so IPython, matplotlib and Sage caches work without
	// landing in WorkDir (whose files the gateway uploads).
	Home string
	// HomeDirs are created (relative to Home) in every kernel's home.
	// Sage's IPython warns and falls back to a temporary directory when
	// its parent, ~/.sage, is missing.
	HomeDirs []string
	// Hostname is the sandbox's host name (it has its own UTS namespace).
	Hostname string

	// Fork makes ipykernel kernels (`python3 -m ipykernel_launcher`), and
	// Sage kernels (`sage --python -m sage.repl.ipython_kernel`, with
	// ForkSagePreload), by forking a template process that has imported
	// the kernel machinery, instead of starting each cold; see "Forked
	// kernels" in the package comment. Other kernels, and any the template
	// fails to make, start cold. On by default.
	Fork bool
	// ForkUID is the template's host uid: outside the kernels' range, and
	// no account's. It is root only in the template's user namespace.
	ForkUID int
	// ForkPrepare has a template also build, once, the part of the
	// kernel application that is no kernel's own (the IPython application,
	// its configuration, the InteractiveShell), which each fork then
	// adopts: about half of what a forked kernel spent before it answered.
	// Off, each fork builds them itself, as a cold kernel does.
	ForkPrepare bool
	// ForkPreload are the modules a Python template imports before it
	// forks.
	ForkPreload []string
	// ForkSagePreload are the modules a SageMath template imports (then
	// it draws one throw-away plot) to fork `sage --python -m
	// sage.repl.ipython_kernel` kernels; empty: Sage kernels start cold.
	ForkSagePreload []string
	// ForkMax is how many kernels one template makes before it is
	// replaced (a fresh template, a fresh address-space layout). A
	// template is also replaced when a file of a module it imported (or
	// its directory) changes on disk, as a package upgrade does. A
	// replaced template forks no more and ends with its last kernel.
	ForkMax int
	// ForkLog receives the templates' own output (nil: discarded).
	ForkLog io.Writer
	// OnForkState, if set, is told when kernels go from forked to cold
	// (failure says why: a template could not be built, or died) and back
	// (failure nil), once per change, for the log.
	OnForkState func(failure error)
}

// DefaultConfig returns limits suited to a public server where each kernel
// serves one visitor: enough for Sage and matplotlib, small enough that a
// few hundred kernels fit on one machine.
func DefaultConfig() Config {
	return Config{
		BwrapPath:     "/usr/bin/bwrap",
		PrlimitPath:   "/usr/bin/prlimit",
		ChoomPath:     "/usr/bin/choom",
		KillPath:      "/usr/bin/kill",
		SetprivPath:   "/usr/bin/setpriv",
		CatatonitPath: "/usr/bin/catatonit",
		UIDBase:       70000,
		UIDCount:      1000,
		StateDir:      "/run/cellgate-sandbox",
		CPUTime:       10 * time.Minute,
		Memory:        4 << 30,
		Processes:     64,
		OpenFiles:     1024,
		FileSize:      64 << 20,
		Disk:          128 << 20,
		Inodes:        16384,
		Lifespan:      6 * time.Hour,
		CPUShare:      1,
		LimitEvery:    250 * time.Millisecond,
		ReadOnly: []string{
			"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
			"/etc/alternatives", // libblas.so.3 and friends resolve through it
			"/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
			"/etc/localtime", "/etc/timezone", "/etc/locale.alias",
			"/etc/protocols", "/etc/services", "/etc/mime.types",
			"/etc/os-release", "/etc/debian_version",
			"/etc/fonts", "/etc/matplotlibrc",
			"/etc/python3", "/etc/python3.11", "/etc/ipython", "/etc/jupyter",
			"/etc/gprc", // PARI/GP (Sage)
		},
		Env: []string{
			// One thread per kernel: the machine is shared, CPUTime counts
			// every thread, and Processes counts threads too.
			"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1",
			// Python 3.11's debugger warns about frozen modules on every start.
			"PYDEVD_DISABLE_FILE_VALIDATION=1",
		},
		Home:        "/home/sandbox",
		HomeDirs:    []string{".sage"},
		Hostname:    "cellgate",
		Fork:        true,
		ForkPrepare: true,
		ForkUID:     69999,
		ForkMax:     500,
		ForkPreload: []string{
			"ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "IPython.core.interactiveshell",
			"IPython.core.completer", "jupyter_client.session", "zmq", "tornado.ioloop",
			"numpy", "matplotlib.pyplot",
		},
		ForkSagePreload: []string{
			"sage.all", "sage.all_cmdline", "sage.repl.ipython_kernel.kernel", "sage.repl.interface_magic",
			"sage.misc.edit_module", "sage.repl.rich_output.backend_ipython", "sage.repl.display.formatter",
			"ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "IPython.core.interactiveshell",
			"IPython.core.completer", "jupyter_client.session", "zmq", "tornado.ioloop",
		},
	}
}

// check reports the first unusable setting.
func (c *Config) check() error {
	var errs []error
	for _, p := range []struct{ name, path string }{
		{"BwrapPath", c.BwrapPath}, {"PrlimitPath", c.PrlimitPath},
		{"ChoomPath", c.ChoomPath}, {"KillPath", c.KillPath},
		{"SetprivPath", c.SetprivPath}, {"CatatonitPath", c.CatatonitPath},
		{"StateDir", c.StateDir}, {"Home", c.Home},
	} {
		if !filepath.IsAbs(p.path) || filepath.Clean(p.path) != p.path || p.path == "/" {
			errs = append(errs, fmt.Errorf("%s %q: want a clean absolute path", p.name, p.path))
		}
	}
	if c.UIDBase <= 0 || c.UIDCount <= 0 || c.UIDBase+c.UIDCount > 1<<31 {
		errs = append(errs, fmt.Errorf("uid range %d+%d: want a positive base and count", c.UIDBase, c.UIDCount))
	}
	if own := os.Getuid(); own >= c.UIDBase && own < c.UIDBase+c.UIDCount {
		errs = append(errs, fmt.Errorf("uid range %d..%d holds the gateway's own uid %d", c.UIDBase, c.UIDBase+c.UIDCount-1, own))
	}
	if c.Fork && (c.ForkUID <= 0 || c.ForkUID >= c.UIDBase && c.ForkUID < c.UIDBase+c.UIDCount || c.ForkUID == 65534) {
		errs = append(errs, fmt.Errorf("ForkUID %d: want a uid outside the kernels' range %d..%d, not root or nobody", c.ForkUID, c.UIDBase, c.UIDBase+c.UIDCount-1))
	}
	if c.Fork && c.ForkMax <= 0 {
		errs = append(errs, fmt.Errorf("ForkMax %d: want a positive number of kernels per template", c.ForkMax))
	}
	if c.UIDBase <= 65534 && c.UIDBase+c.UIDCount > 65534 {
		errs = append(errs, fmt.Errorf("uid range %d..%d holds nobody (65534)", c.UIDBase, c.UIDBase+c.UIDCount-1))
	}
	if c.CPUTime < time.Second {
		errs = append(errs, fmt.Errorf("CPUTime %v: want at least 1s", c.CPUTime))
	}
	if c.CPUShare < 0 || c.CPUShare > 4096 || c.CPUShare != c.CPUShare {
		errs = append(errs, fmt.Errorf("CPUShare %v: want cores, or 0 for no share", c.CPUShare))
	}
	if c.LimitEvery < 10*time.Millisecond || c.LimitEvery > time.Minute {
		errs = append(errs, fmt.Errorf("LimitEvery %v: want 10ms to 1m", c.LimitEvery))
	}
	for _, l := range []struct {
		name  string
		value int64
	}{
		{"Memory", c.Memory}, {"Processes", int64(c.Processes)}, {"OpenFiles", int64(c.OpenFiles)},
		{"FileSize", c.FileSize}, {"Disk", c.Disk}, {"Inodes", int64(c.Inodes)}, {"Lifespan", int64(c.Lifespan)},
	} {
		if l.value <= 0 {
			errs = append(errs, fmt.Errorf("%s %d: want a positive limit", l.name, l.value))
		}
	}
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, "/\n ") {
		errs = append(errs, fmt.Errorf("Hostname %q: want a plain host name", c.Hostname))
	}
	for _, p := range c.ReadOnly {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			errs = append(errs, fmt.Errorf("ReadOnly %q: want a clean absolute path other than /", p))
		}
	}
	for _, d := range c.HomeDirs {
		if d == "" || filepath.IsAbs(d) || !filepath.IsLocal(d) {
			errs = append(errs, fmt.Errorf("HomeDirs %q: want a relative path inside Home", d))
		}
	}
	for _, e := range c.Env {
		if !strings.Contains(e, "=") {
			errs = append(errs, fmt.Errorf("Env %q: want NAME=value", e))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox config: %w", err)
	}
	return nil
}
