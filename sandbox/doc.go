// Package sandbox starts kernel processes, either isolated under an
// untrusted account (Bwrap) or, for development only, as they are (None).
//
// # What a Bwrap kernel is
//
// Every live kernel runs under a numeric uid of its own, taken from
// Config.UIDBase..+UIDCount (default 70000..70999), with the gid of the same
// number and no supplementary groups. Distinct uids keep kernels from
// signalling, tracing or reading each other even if something were shared,
// and make RLIMIT_NPROC count per kernel. No passwd or group entries are
// needed: the sandbox gets a synthetic /etc/passwd naming the uid "sandbox".
// The range must only be kept free of real accounts and subordinate id
// ranges (NewBwrap checks; scripts/sandbox-setup.sh checks it for make
// deps). A uid is held through an flock on StateDir/uid-N.lock, so gateways
// and test binaries sharing a host share the range safely, and leftovers of
// a crashed gateway (uids nobody holds) are cleared by the next NewBwrap or
// Launch. Uids are handed out round the range, so one rests between two
// kernels; a restart keeps the uid.
//
// The process tree is
//
//	gateway (root)
//	└─ choom -n 1000 (the kernel's uid; exec)  OOM killer: kernels first
//	   └─ bwrap, outer: Process.Pid, unprivileged, in the host's namespaces
//	      └─ bwrap, inner: pid 1 of the sandbox, leader of a new session
//	         └─ prlimit (exec) → the kernel, pid 2
//
// bwrap runs as the kernel's uid rather than as root: run by root without
// the setuid bit it would map the sandbox's user to host root (owner of
// every root file), and the privileged mode needs a setuid bwrap. Run as
// the kernel's uid it builds the sandbox in a user namespace of its own, in
// which that uid maps to itself and has no capabilities. bwrap sets
// no_new_privs; --disable-userns forbids further user namespaces (the
// usual door to kernel attack surface); a seccomp filter (seccomp.go)
// closes io_uring, userfaultfd, bpf, perf_event_open, the keyring calls,
// ptrace, and foreign or x32 syscall numbers (EPERM; so i386's socketcall
// cannot go round the next rule), and lets socket and socketpair make
// sockets of AF_UNIX, AF_INET and AF_INET6 only, and of AF_NETLINK with
// protocol NETLINK_ROUTE only: glibc asks the kernel that way for the
// interfaces and addresses (if_nameindex, getifaddrs, getaddrinfo with
// AI_ADDRCONFIG), and in the kernel's network namespace it shows the
// loopback only. Every other family fails with EAFNOSUPPORT, as on a
// kernel built without it, so Python gets a plain OSError: AF_VSOCK above
// all (in a virtual machine it reaches the hypervisor's services, and no
// network namespace covers it), AF_PACKET, AF_ALG (hashlib does not use
// it), AF_BLUETOOTH, AF_XDP, AF_KEY and the other rarely used families,
// and the other netlink protocols (audit, uevents, netfilter, sock_diag,
// generic). Forked kernels load the same program.
//
// Namespaces: user, mount, pid (/proc shows the sandbox only), ipc, uts
// (host name Config.Hostname), cgroup, and network: the kernel has its own
// loopback and nothing else, so it reaches neither the host's 127.0.0.1 nor
// its abstract unix sockets. Its Jupyter sockets are ipc (unix socket
// files), which work across network namespaces.
//
// The file system is bwrap's tmpfs root, made read-only after setup, with:
// Config.ReadOnly bound read-only (/usr, the merged-/usr links, and an
// allowlist of /etc entries: /etc as a whole can hold world-readable
// secrets); synthetic passwd, group, hosts, hostname and nsswitch.conf; a
// new /proc; bwrap's minimal /dev, read-only; no /sys. Everything writable
// lives on one tmpfs per kernel, mounted by the gateway at StateDir/k<uid>
// with size Config.Disk and Config.Inodes files: its directories are the
// kernel's WorkDir, RuntimeDir (both at the paths the pool gave, so ipc
// socket paths are the same inside and out), /tmp (also /var/tmp),
// /dev/shm, and HOME (Config.Home, kept out of WorkDir so that IPython,
// matplotlib and Sage caches are not uploaded as the kernel's files). The
// tmpfs is bound over the pool's WorkDir and RuntimeDir on the host too,
// so the gateway reads the kernel's files where it expects them. Those
// host-side binds are nosymfollow (and nosuid, nodev, noexec): the gateway
// works as root in directories the kernel controls, and a symlink planted
// there fails with ELOOP instead of leading it to /etc/shadow or to another
// service's socket. The gateway must still open the kernel's files with
// O_NONBLOCK and upload regular files only: a FIFO would block a reader.
// When the pool's directories lie below /tmp (or /var/tmp, /dev/shm),
// bwrap makes their mount points in the kernel's own /tmp at every launch,
// restarts included: the gateway makes the directories leading to them
// first, root's and 0755, in a /tmp and /dev/shm that are root's and
// sticky, so the kernel can neither move them aside nor leave a symlink
// out of the sandbox in their place for a restart's bwrap to follow (it
// once made directories on the host, owned by the kernel's uid). Pool
// directories below the kernel's home are refused.
//
// Descriptors: bwrap passes on whatever it inherits, so Launch marks every
// descriptor of the gateway above stderr close-on-exec first (inherited
// ones lack it); the kernel starts with stdin (/dev/null) and the output
// pipe only. Its environment is built from scratch (see Config.Env).
//
// # Limits
//
//   - CPU: Config.CPUTime, twice. RLIMIT_CPU per process: SIGXCPU, then
//     SIGKILL two seconds later. And for the kernel's whole process tree,
//     ended processes included, by its cgroup's CPU usage (below) or else
//     the accountant: the kernel is killed once its processes have used
//     more than CPUTime together. Process.Err matches ErrCPULimit either
//     way.
//   - Memory: Config.Memory, twice. RLIMIT_AS per process: allocations
//     fail (MemoryError in Python). And for the whole tree, by its memory
//     cgroup (the OOM killer kills at the limit, then the gateway ends the
//     kernel) or else the accountant (the kernel is killed once its
//     processes hold more than Memory together, proportional set size);
//     Process.Err matches ErrMemoryLimit. Sage needs about 2.4 GiB of
//     address space (PARI and GAP reserve it), hence the 4 GiB default.
//   - CPU share: Config.CPUShare cores on average for the whole tree
//     (default 1), by the cgroup's CFS quota, or else the accountant: a
//     kernel that has run more than a second's worth ahead of its share is
//     stopped until it is back.
//   - Processes and threads: pids.max of the kernel's cgroup (the whole
//     sandbox, bwrap's and a forked kernel's helper processes included)
//     and RLIMIT_NPROC (Config.Processes), per uid, hence per kernel; they
//     stop fork bombs. The outer bwrap is counted outside the sandbox's
//     user namespace, not against RLIMIT_NPROC.
//   - Open files: RLIMIT_NOFILE (Config.OpenFiles).
//   - File size: RLIMIT_FSIZE (Config.FileSize): Python gets EFBIG.
//   - Disk: the tmpfs (Config.Disk bytes, Config.Inodes files), shared by
//     WorkDir, /tmp, /dev/shm and HOME: ENOSPC. It is RAM: Disk is part of
//     what a kernel may cost.
//   - Lifespan: a timer kills the sandbox after Config.Lifespan; Process.Err
//     then matches ErrLifespan.
//
// The rlimits are applied by prlimit(1) inside the sandbox, just before
// the kernel, so bwrap's own setup is not limited and no code of ours runs
// between fork and exec. A kernel that hits a limit dies or gets an error;
// other kernels and the gateway do not notice.
//
// # Kernels' cgroups (cgroup.go)
//
// Rlimits count per process: four processes of 2 GiB each hold 8 GiB
// under a 4 GiB RLIMIT_AS, and forked workers each get their own
// RLIMIT_CPU. A cgroup counts the whole kernel. NewBwrap makes
// <its own cgroup>/cellgate in each hierarchy (v1: memory, pids, cpu,
// cpuacct, wherever mounted, combined mounts too; v2: one directory, with
// memory, pids and cpu enabled in its subtree_control, which the
// gateway's own cgroup may refuse); nested, so the host's limits on the
// gateway still hold. It then tries each controller on a throw-away shell
// in a cgroup of its own, all at once (about half a second): a 16 MiB
// memory limit must kill a shell holding 64 MiB and count the kill
// (oom_kill), pids.max 1 must make its fork fail, a 5% CPU quota must
// throttle a busy loop, and its CPU usage must count it. A controller
// that is missing or fails is left to the accountant; Describe (the
// start-up log) names the mechanism of each limit and why.
//
// Each kernel Launch starts gets the cgroup <uid>-<WorkDir's name>-<n> in
// each hierarchy used, its limits written first: memory.limit_in_bytes
// (v2 memory.max) = Memory, pids.max = Processes, cpu.cfs_quota_us over a
// 100 ms cpu.cfs_period_us (v2 cpu.max) = CPUShare. A cold kernel is in it
// before any of its code runs: bwrap's --block-fd holds the sandbox's pid
// 1 until the gateway has written it and the outer bwrap to cgroup.procs
// (v1 moves all threads of a process; everything forked later is forked
// inside). A forked kernel is moved once the template has told its pid:
// the kernel, then what it has forked, walk after walk until a walk
// finds no process it has not moved (its pid 1, catatonit, stays out); Launch returns it only then, and
// until it is leased the kernel runs no client code and forks nothing.
// When the kernel has ended (its processes swept), whatever is left in
// its cgroups is killed and they are removed (rmdir, retried until the
// last process is reaped); a gateway that crashed leaves them, and the
// next start removes those whose uid nobody holds.
//
// What the cgroups hold, found on this machine (cgroup v1 under a
// sandboxing kernel that reports memory.shown_ram_in_bytes, 2 cores):
//
//   - memory.limit_in_bytes holds: a process allocating past it is killed
//     by the OOM killer (oom_kill in memory.oom_control counts it), and
//     four processes together cannot pass it either (two of four killed).
//     The accountant, reading oom_kill every LimitEvery, then ends the
//     whole kernel with ErrMemoryLimit; if the kernel's main process was
//     the one killed, the launcher names the limit from the count it
//     reads before removing the cgroup. Tests: four workers held 468 to
//     508 MiB together under 512 MiB, where the accountant alone let 517
//     to 539 MiB through. The cgroup charges a page to the cgroup that
//     first touched it: a forked kernel is not charged for the pages it
//     still shares with its template (the template's cgroup is), and a
//     kernel's files on its tmpfs are charged to it.
//   - pids.max holds (threads count): a fork past it fails with EAGAIN,
//     and pids.events counts it. It counts the outer bwrap that
//     RLIMIT_NPROC does not, so it is met first.
//   - cpu.cfs_quota_us holds: two busy processes under half a core got
//     0.6 cores over 4 s, nr_throttled counting; four busy workers of a
//     kernel under a quarter core got 0.22 to 0.24 cores (tests).
//     cpu.shares does not: two cgroups at 1024 and 128 shares, two busy
//     processes each, got 6.0 and 6.5 s of CPU in 6 s. It is not used.
//   - cpuacct.usage counts every process the cgroup held, children whose
//     parent ignores SIGCHLD (reaped by the host's kernel, into no one's
//     cutime) included: three such children of 1 s each counted 3.57 s.
//     The accountant compares it with CPUTime every LimitEvery, so the
//     hole of the /proc sum below is closed where cpuacct exists.
//
// A look at a kernel's cgroup (CPU usage and OOM kills, every
// LimitEvery) costs the gateway about 0.09 ms (BenchmarkCgroupLook),
// against 0.5 ms for a walk of a small tree in /proc.
//
// cgroup v2 is written (the same limits in memory.max, pids.max, cpu.max,
// usage_usec of cpu.stat, oom_kill of memory.events) but untested: this
// machine mounts v1 for every controller and cgroup2 with hugetlb only.
//
// # The tree accountant (treelimit.go)
//
// Where a kernel's cgroup holds a limit, the accountant reads the cgroup;
// where a controller is missing or failed its probe, it holds that limit
// itself. For every kernel Launch starts (cold or forked, restarts too),
// the gateway then samples the kernel's process tree every
// Config.LimitEvery (250 ms): Process.Pid and everything below it (for a
// cold kernel the two bwraps and the kernel's processes; for a forked one
// the kernel and its processes, and its pid 1 and the orphans it
// adopted). A process cannot leave that tree by changing its group or
// session: an orphan is adopted by the sandbox's pid 1, which is in the
// tree. When every limit is held by the cgroup, /proc is not read
// at all.
//
//   - Memory: the sum of the processes' resident sets, read from
//     /proc/PID/stat, is cheap but counts a page shared by n processes n
//     times (a forked kernel's helpers share most of their pages with the
//     template); only when it is over the limit are the exact proportional
//     set sizes (smaps_rollup, a walk of the page tables) read, and their
//     sum decides. While that sum is under the limit it is read again only
//     once the resident sets have grown by the room it left (the PSS of
//     the tree grows no faster), or two seconds later (it also grows when
//     processes outside the tree that share its pages end: other kernels
//     of its template). The kernel's tmpfs (Config.Disk) is bounded on
//     its own and not in this sum, nor is what the host's kernel holds
//     for it (socket buffers, page tables).
//   - CPU: the processes' own times (utime+stime) while they live; once a
//     process has been waited for, its whole time appears in its parent's
//     cutime+cstime, of which the part already counted is taken off. So a
//     worker that ends, even one that lived less than a period, is still
//     counted. What escapes: the children of a process that ignores
//     SIGCHLD (or sets SA_NOCLDWAIT) are reaped by the host's kernel
//     without reaching any cutime: each loses its CPU since it was last
//     sampled, all of it if it lived less than a period. Such a kernel is
//     still held to RLIMIT_CPU per process, to its CPU share, and to its
//     lifespan.
//   - Margin: a tree is caught at the first sample after it went over a
//     limit: it can exceed Memory by what it allocates in one period (and
//     never by more than RLIMIT_AS per process allows), and CPUTime by one
//     period times the cores it runs on, more if the gateway itself is
//     starved of CPU. Tests measure both: 517 to 539 MiB held under 512 MiB
//     with four workers allocating 400 MiB/s together; 3.1 s used under
//     3 s with four busy workers.
//   - CPU share: the accountant keeps a budget that grows by CPUShare
//     seconds per second, at most one second's worth, and shrinks by what
//     the tree used. While it is negative, every process of the tree but
//     the root is stopped (SIGSTOP; walked again until none runs, as one
//     may fork meanwhile) and then resumed (SIGCONT, only those it
//     stopped). While the budget is low the tree is sampled five times as
//     often (50 ms), so it runs in short slices. So the tree gets its
//     share on average, whatever the machine's load; the debt is capped
//     at half a second's worth, so it is stopped about half a second at a
//     time at most, well within the pool's heartbeat tolerance, and a
//     signal (an interrupt) sent meanwhile arrives when it resumes. The
//     cap also bounds what the share holds: a tree running on more than
//     ten cores per core of share makes more debt in one slice than is
//     kept, and gets more than its share (a shorter LimitEvery helps).
//     Lowering the priority (nice) would not do: on an idle machine it
//     bounds nothing.
//   - Cost: a sample of a tree of five processes and a dozen threads
//     takes about 0.2 ms of the gateway's CPU (BenchmarkTreeSample, on a
//     loaded 2-core machine), 0.1% of a core per kernel at 4 samples a
//     second; the exact PSS, read only when the resident sets are over
//     the limit, about 0.5 ms more.
//
// The per-process rlimits stay the first line: they act at once, inside
// the host's kernel, without sampling; the accountant bounds the sum.
// When it ends a kernel, Process.Err names the limit and what the tree
// held or used ("kernel exceeded its memory limit: its 7 processes held
// 517 MiB together (limit 512 MiB)"), which the pool and the gateway pass
// on to the client as the reason the kernel died.
//
// # Signals and the end of a kernel
//
// The outer bwrap would die of SIGINT (taking the sandbox with it), and
// the sandbox's pid 1 ignores signals it has no handler for, so
// Process.Signal goes to the session bwrap creates inside (--new-session,
// which also keeps the kernel away from the gateway's terminal): SIGINT
// reaches the kernel's Python as KeyboardInterrupt. Kill sends SIGKILL to
// that session and to the outer bwrap; pid 1's death ends every process of
// the sandbox, whatever group it moved to (setsid, double fork), and
// --die-with-parent ends the sandbox with bwrap, bwrap with the gateway.
// Done is closed only once no process of the kernel's uid is left: the
// outer bwrap exits before pid 1 has finished dying, so Launch's reaper
// then runs kill -KILL -1 as that uid until nothing of it remains, and
// empties RuntimeDir (its sockets are dead, anything else there is the
// kernel's).
//
// # Lifecycle, for the pool
//
//   - Launch carries the regular files in RuntimeDir (the connection file)
//     and WorkDir into the kernel's tmpfs, which covers both until Close.
//   - To restart a kernel, wait for Done and Launch again with the same
//     directories, without Close: the new kernel keeps the uid and the
//     files (the connection file must be written anew: RuntimeDir was
//     emptied).
//   - Close kills, waits, unmounts and frees the uid. Call it after the
//     last read of WorkDir and before removing WorkDir and RuntimeDir,
//     which are busy mount points until then.
//
// # Forked kernels (Config.Fork)
//
// A cold ipykernel spends about a second of CPU importing the kernel
// machinery, a cold Sage kernel about four (and its first plot seconds
// more). With Config.Fork, Launch makes `python3 -m ipykernel_launcher`
// kernels by forking a template that has imported it once (forkserver.py,
// embedded), with Config.ForkPreload (numpy, matplotlib: imported with the
// inline backend chosen, as ipykernel chooses it, and one throw-away figure
// drawn, not through pyplot, so that each kernel hooks the inline backend
// into its own shell when it first plots), and `sage --python -m sage.repl.ipython_kernel` kernels from a
// template of their own, started through the sage script (so sage-env's
// settings are the template's, and each Sage kernel's under its own
// environment), that has imported Config.ForkSagePreload (sage.all) and
// drawn one throw-away plot. Either keeps every property above:
//
//	gateway (root)
//	└─ bwrap: the template (named cellgate-tmpl), in a user namespace
//	   │  made by the gateway (uid map: 0 → Config.ForkUID, the kernel
//	   │  range → itself) that may hold no further user namespace
//	   │  (max_user_namespaces 0 there: what --disable-userns is for a
//	   │  cold kernel), with its own pid, net, ipc, uts namespaces and the
//	   │  read-only file system of a kernel (no tmpfs of any kernel, no
//	   │  /etc secrets); root of that namespace, with every capability
//	   │  there and none outside it
//	   ├─ P: pid 1 of a kernel's pid namespace (the template unshares a
//	   │  pid namespace for each kernel's two processes, and returns to
//	   │  its own after the fork): catatonit, a reaper, exec'd through
//	   │  setpriv with no capability in any set and no_new_privs, in a
//	   │  process group of its own; the template kills it when it has
//	   │  reaped the kernel, which ends whatever the kernel left there
//	   └─ K: the kernel (named as a cold one: python3), a fork per kernel,
//	      pid 2 of that namespace, its own process group (Process.Pid);
//	      dies with the template; unshares mount, net, ipc, uts, mounts
//	      /proc, is reseeded (random, numpy, Sage); moves in its tmpfs
//	      directories, empties the bounding and inheritable capability
//	      sets, drops to the kernel's uid (the other sets empty), is made
//	      dumpable again as a cold kernel is (its /proc files are its
//	      own), no_new_privs, the rlimits, the seccomp filter; then is
//	      given its own environment, and reads its connection file
//
// The template keeps one kernel made ahead of its request, a spare
// (named cellgate-spare): forked, in its own pid namespace with its pid 1,
// it has copied the template's pages its start will write, made its own
// namespaces, /proc and random state (all that comes before the tmpfs
// directories in K above: the same in every kernel), and waits on a
// socketpair for the request and its descriptors; then it is K as above.
// That takes the fork and the copy (about 40 ms) off a launch's way to
// ready; the next spare is made right after the launch is answered. A
// spare holds nothing of any kernel's: no key, no uid, no file. It costs
// its template about 16 MiB of private memory (python3: the copied pages).
//
// Each kernel is one fork of the template, not three: each fork of a
// process of the template's size (about 100 MiB mapped) costs some 17 ms
// of CPU in its page tables' copy and teardown alone, and a Python
// process that runs a little more to wait as pid 1 twice that; pid 1 is
// therefore a small exec'd program (posix_spawn: no copy of the
// template's page tables). The reply to each launch carries a pidfd of
// the kernel, from which the gateway reads its host pid.
//
// The template never runs user code and never holds a kernel's key: a
// kernel reads its own connection file after the fork, as its own uid
// (TestForkedKernelKeys scans the memory of kernels, of the template and
// of the helpers for keys). It starts no thread. Its host uid is no
// kernel's, and it is root only in a namespace that owns nothing of the
// host: it can reach no other kernel's files (their tmpfs is not in its
// view) and its control channel (a socketpair to the gateway) is closed in
// every kernel before anything else runs. A forked kernel has what a cold
// one has, no more (TestForkedKernelIdentity): no capability in any set,
// no way to a new user namespace, no_new_privs, the seccomp filter.
//
// The kernel's tmpfs directories reach K as detached mounts: the gateway
// clones each (open_tree) and passes the descriptors over the control
// channel; K attaches them (move_mount) in its own mount namespace. The
// host's side of them is the same as a cold kernel's, so the pool and the
// file watcher see no difference. Exit codes travel from the template
// (which reaps K) to the gateway; ErrCPULimit and ErrLifespan are reported
// as for cold kernels. If the template cannot start or dies, Launch starts
// the kernel cold and Describe names the failure. A template whose imports
// started a thread refuses to start (a fork copies the calling thread
// only). Each template has a writable home of its own (sage-env and
// Sage write there), covered in each kernel by the kernel's.
//
// With Config.ForkPrepare (the default) a template also builds, once, what
// the kernel application makes before it needs to know which kernel it is:
// the IPython application with its configuration files and profile, and the
// kernel's InteractiveShell (magics, formatters, completer, its namespaces),
// with history in memory and no thread. Each kernel then parses its own
// command line, opens its connection file, sockets and threads, and adopts
// that shell: it makes its own history (in memory), and takes its working
// directory, environment and %store database again
// (TestForkedKernelIsLikeACold compares, from inside, a forked kernel of
// each kind with a cold one). That is about a third less CPU per kernel
// than a fork that only imported the machinery. Every kernel the fork
// server could make keeps its history in memory, cold ones too (Launch
// adds --HistoryManager.hist_file=:memory:): its home is a tmpfs that ends
// with it, so a history file there outlived at most a restart of the
// kernel, and cost each start a sqlite database and a saving thread
// (about 7 ms of CPU). %history and a client's history_request answer
// from the kernel's current session; after a restart, the history starts
// empty.
//
// Where a forked python3 kernel's start goes (one kernel traced from
// Launch to ready on this 2-core machine, unloaded, before ForkPrepare,
// when a kernel was a fork A of the template that forked B, pid 1, that
// forked C, the kernel; milliseconds since Launch): the gateway's side (detached mounts, the
// request, the template's fork and answer) 20; A's unshare and B's fork
// 12; B's mounts 6, its credentials, limits and seccomp 4; C's fork and
// reseeding 20 (mostly copy-on-write faults of the template's pages);
// IPKernelApp.initialize 145; its start until kernel_info is answered
// 15; the pool's warm-up (1+1, the display hook reset) 30: about 260 in
// all. ForkPrepare takes a third of the kernel's CPU out of initialize
// (about 270 to 190 ms of CPU from fork to start, on a loaded machine);
// what is left there is this kernel's own: its sockets and their event
// loops and threads (ZMQ binds, three asyncio loops), its connection
// file, history database and profile directories. Profiled (perf, and
// cProfile in an unsandboxed copy of the template), half of that CPU is
// the Linux kernel's, not Python's: the start writes to about 3,600
// pages it shares with the template (4,500 minor faults to the first
// cell), each a copy-on-write fault, and once the kernel has threads
// each fault also flushes the other CPU's TLB by interrupt (page faults
// 37% of the kernel's samples, copy-on-write 23%, the flush interrupts
// 12%). No module is imported after the fork (faulthandler aside), and
// the Python left is spread thin: init_sockets 25 ms, the connection
// file and its Session 22, adopt_shell 20 (the history database 14),
// init_code 16, thread starts 11 (under cProfile). So a kernel runs its
// start pinned to the CPU it was forked on (every thread gets its CPUs
// back when its event loop first runs, before any cell), and each
// template rehearses one start in a child, records from pagemap which
// of its pages that start copied, and each kernel copies those at once
// (MADV_POPULATE_WRITE) while it has one thread. The kernel's CPU from
// fork to its first cell, sandboxed, p50 of 5 interleaved rounds on a
// machine busy with other work: 239 ms, 215 pinned, 186 pinned and
// pre-copied, for 0.5 MiB more PSS per kernel. The rehearsal goes on
// through what every kernel is asked first, a kernel_info and a
// displayed result (rehearse_requests: dispatched as if they came on its
// shell socket): of the ~4,650 pages a python3 kernel has copied by its
// first result, ~750 were copied after its event loop ran, each with a
// TLB flush on the other CPU, and ~300 still are. Three interleaved
// pairs: a lone forked start 161, 132, 139 -> 127, 111, 110 ms; the
// machine's busy CPU per kernel in BenchmarkSupply 237, 237, 236 ->
// 247, 217, 216 ms. BenchmarkSupply forked
// (CPU-bound), three interleaved pairs at load 2-5 from other work:
// 2.26, 3.24, 2.95 -> 2.66, 4.30, 3.76 kernels/s (ms-per-start 900,
// 615, 632 -> 735, 443, 502). BenchmarkSandboxedStart forked (one start
// at a time) did not move beyond the noise (before 555, 336, 402, 288,
// 326 ms; after 423, 436, 313, 317, 414): there the wait is the
// gateway's. Its ZMQ sockets connect before the kernel has bound its
// ipc paths and retry at libzmq's default reconnect interval, 100 ms: a
// build with a 5 ms interval (kernelpool/sockets.go, not changed here)
// took 291 -> 199 ms per forked start and 4.47 -> 5.96 kernels/s.
//
// Where a lone forked python3 start goes now (12 starts traced, medians,
// milliseconds since Launch; one kernel, its spare, its pid 1): Launch
// answered 5 (uid, tmpfs, cgroup, the request handed to the spare); the
// kernel's tmpfs directories, credentials, limits and seccomp done 9; its
// environment 11; IPKernelApp.initialize until init_kernel (connection
// file and Session, sockets, the control, iopub and heartbeat threads,
// output streams) 55; the kernel, the adopted shell, extensions and
// init_code 77; the event loop 80; kernel_info answered and idle 88; the
// pool's warm-up 101. The rest is CPU, in a machine where memory is dear:
// on this virtual machine a page fault costs about 13 µs (a fresh page
// touched from Python: 4096 pages, 13.0 to 13.5 µs each, every round), a
// forked kernel copies about 4,650 of the template's pages by its first
// result (the spare about 4,350 of them, 30 ms of CPU), and a fork of the
// template copies its page tables (4 ms) and costs the child 10 ms of
// faults before it runs a line. BenchmarkSupply reports the machine's busy
// CPU per kernel (every process counted): about 220 to 250 ms forked.
// Interleaved, before and after the changes of December 2026
// (rehearsed first requests, clean uids first, warm_shell, isolate in the
// spare, libzmq's first context in the template, history in memory, the
// logger's level): a lone forked start 162, 145, 130 -> 115, 99, 98 ms;
// busy CPU per kernel in BenchmarkSupply 310, 257, 259 -> 249, 223, 233.
//
// What a fork inherits and must not share is renewed in the kernel before
// it runs: Python's and numpy's random generators, Sage's random state
// (set_random_seed: Sage's generators, and PARI's, GAP's, NTL's when Sage
// next uses them; PARI's own generator starts from its fixed default in
// cold kernels too), Sage's temporary directories (made again in the
// kernel's home), the signals Python sets at start (SIGPIPE ignored),
// the environment. Templates start one at a time per kind and pool
// directories, so a Sage template's start holds up no Python kernel.
//
// The process names tell templates, spares and pid 1s (catatonit) from
// kernels: a tool that counts python processes counts kernels only.
// Templates lists the templates (host pid, kernels made and running,
// retired or not); kernelpool (TreeMemory) measures a kernel's memory as
// the kernel and what it forked, the accountant also what its pid 1
// adopted.
//
// A template is replaced after Config.ForkMax kernels (500 by default):
// every kernel it makes shares its address-space layout, and whatever the
// template may have drifted into. It is also replaced when the Python it
// imported changes on disk: once ready it names the file of every module
// it imported, and their directories (about 1100 paths for the default
// Python preload, 3000 for Sage's); the gateway stamps them (inode, size,
// mtime, ctime) and, at a launch, at most once a second, compares (a few
// milliseconds per thousand). A package
// upgrade replaces files and so changes inodes and directories; an edit in
// place changes mtime and ctime; a file changed while the template started
// counts as changed. The launch that finds a template due starts the new
// one (and waits for it, about a second); the old one is retired: it forks
// no more, its kernels run on, and it is stopped once the last of them has
// ended (they would die with it). Close stops retired templates too.
//
// The gateway must run as root (switching uids, mounting tmpfs), on Linux
// 5.10 or later (nosymfollow; 5.2 for detached mounts), with unprivileged
// user namespaces enabled (Debian's default).
package sandbox
