# cellgate's fork-server template (see sandbox/doc.go, "Forked kernels").
#
# It runs in bwrap, in a user namespace the gateway made: its own uid (the
# template uid, outside the kernels' range) is root there, and the kernels'
# uids map to themselves. It imports the kernel machinery once, then forks
# one kernel per request from the gateway. It never runs user code, starts
# no thread, and never holds a kernel's key: each kernel reads its own
# connection file after the fork, as its own uid.
#
# Control channel: fd 3, a SOCK_SEQPACKET socket. Requests are JSON with
# descriptors (SCM_RIGHTS); every answer is one JSON object:
#   gateway → {"id", "uid", "work", "runtime", "home", "argv", "env"}
#             fds: output, then detached mounts of run, work, tmp, home, shm
#   template → {"files": [path, ...]} (the files of every module it
#              imported, and their directories; several messages), then
#              {"ready": true, "pid": its pid} once, with its pidfd; then
#              {"id", "pid"} with pidfds of the kernel and of its pid 1, or
#              {"id", "error"}; and {"exited": pid, "code": exit code}
# Each kernel is a fork of the template, pid 2 of a pid namespace of its
# own whose pid 1 is catatonit (spawn_pid1), made ahead of its request
# (make_spare: cellgate-spare until the request comes); the kernel is
# named as a cold one would be (python3), the template cellgate-tmpl.
# The seccomp program every kernel loads is read from fd 4 at start.
import ctypes
import gc
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import traceback

CONFIG = json.loads(sys.argv[1])
MODULE = CONFIG["module"]  # the kernel: ipykernel_launcher, sage.repl.ipython_kernel
# What started the template set this (sage-env, for Sage): a kernel with
# keep_env gets it under its own, as a cold one would.
TEMPLATE_ENV = dict(os.environ)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The kernel application made ready in the template (prepare_app), or None.
PREPARED = None
# The pages of the template's private writable memory (runs of
# consecutive pages: [address, count]) that a kernel's start copies on
# write, as rehearse found them; each kernel copies them at once.
COPIED = []
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_CAPBSET_DROP = 1, 4, 15, 24
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22
CAP_VERSION_3 = 0x20080522
SECCOMP_MODE_FILTER = 2
SYS_MOVE_MOUNT = 429
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100


def set_name(name):
    """Names this process (/proc/PID/comm, what ps and top show)."""
    libc.prctl(PR_SET_NAME, os.fsencode(name)[:15], 0, 0, 0)


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


SECCOMP = read_all(4)
os.close(4)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def drop_capability_sets():
    """Empties the bounding and inheritable capability sets, as bwrap does
    for a cold kernel: dropping to the kernel's uid clears the effective
    and permitted sets only. Needs CAP_SETPCAP, which the template has in
    its own user namespace."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22 and cap > 0:  # EINVAL: past the last capability
                break
            check(-1, "drop capability %d" % cap)
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} x 2
    check(libc.capget(header, data), "capget")
    data[2] = data[5] = 0
    check(libc.capset(header, data), "capset")


def load_seccomp():
    if not SECCOMP:
        return
    buf = ctypes.create_string_buffer(SECCOMP, len(SECCOMP))
    prog = SockFprog(len(SECCOMP) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def move_mount(tree, target):
    check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
          "mount on " + target)


def mount_point(path):
    """Makes path exist as a directory to mount on, under a small private
    tmpfs where the template's read-only root has no room for it."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    mount_point(parent)
    try:
        os.mkdir(path, 0o755)
    except OSError:
        check(libc.mount(b"tmpfs", os.fsencode(parent), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                         b"size=64k,nr_inodes=64,mode=0755"), "tmpfs on " + parent)
        os.mkdir(path, 0o755)


def loopback_up():
    """Brings up the kernel's own loopback, as bwrap does: a new network
    namespace has lo, down."""
    import fcntl
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def set_limits():
    limits = CONFIG["limits"]
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 2))
    resource.setrlimit(resource.RLIMIT_AS, (limits["as"], limits["as"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def close_all_but(keep):
    """Closes every descriptor of this process not in keep: nothing of the
    template's (its control channel above all) reaches a kernel."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor


def isolate():
    """What makes this process a kernel's before it is any kernel's (a
    spare does it ahead of its request): a process group of its own, its
    own mount, network, IPC and host name namespaces, its /proc, and
    fresh random state."""
    signal.set_wakeup_fd(-1)
    os.setpgid(0, 0)
    # The gateway interrupts the kernel by signalling this group: until it
    # is a kernel (become_kernel), SIGINT must not end it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "private mounts")
    # This process's pid namespace is the kernel's: its /proc shows that
    # namespace only.
    check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "proc")
    socket.sethostname(CONFIG["hostname"])
    loopback_up()
    reseed()


def kernel(req, fds, isolated=False):
    """Runs in the forked child, pid 2 of the pid namespace the template
    made for it (spawn_pid1 is its pid 1), once it has copied the pages
    its start writes (copy_pages) and, if isolated, done isolate();
    never returns."""
    out, run, work, tmp, home, shm = fds
    # Named as a cold kernel is: it is the kernel from here on.
    set_name(os.path.basename(sys.executable))
    allowed = pin_to_one_cpu()
    if not isolated:
        isolate()
    close_all_but(set(fds) | {0, 1, 2})
    os.dup2(out, 1)
    os.dup2(out, 2)
    # /tmp first: the pool's directories may lie under it.
    move_mount(tmp, "/tmp")
    move_mount(shm, "/dev/shm")
    move_mount(home, req["home"])
    for tree, target in ((run, req["runtime"]), (work, req["work"])):
        mount_point(target)
        move_mount(tree, target)
    for fd in fds:
        os.close(fd)
    os.chdir(req["work"])
    drop_capability_sets()
    uid = req["uid"]
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # A change of credentials clears the parent-death signal, and makes
    # the process undumpable: its /proc files would then be root's (the
    # template's), and the kernel could not read its own /proc/self/mem
    # or environ as a cold kernel can. Only its own uid (its own processes)
    # and host root can reach a dumpable process, as for a cold kernel.
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    set_limits()
    load_seccomp()
    env = dict(TEMPLATE_ENV) if CONFIG["keep_env"] else {}
    env.update(req["env"])
    argv = req["argv"]
    become_kernel(argv, env)
    if PREPARED is not None and len(argv) == 2 and argv[0] in ("-f", "--f"):
        run_prepared(PREPARED, argv[1], lambda kernel: unpin_when_started(kernel, allowed))
    else:
        if allowed is not None:
            os.sched_setaffinity(0, allowed)
        forget_prepared()
        import runpy
        runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
    sys.exit(0)


def become_kernel(argv, env):
    """What a kernel process sets up before its kernel module runs, as a
    cold one's Python would have: signals, its environment, sys.argv and
    sys.path, and fresh random state."""
    # As Python starts: SIGPIPE ignored (a write to a closed pipe or
    # socket raises BrokenPipeError, it does not kill the kernel).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None and env.get("MPLBACKEND", INLINE_BACKEND) != INLINE_BACKEND:
        # The kernel's own choice, as its import would have read it.
        matplotlib.rcParams["backend"] = env["MPLBACKEND"]
    sage_directories()
    sys.argv = [MODULE] + argv
    # As `python3 -m` starts a module: its directory first on the path
    # (the template itself was started with -c, which puts "" there).
    if sys.path and sys.path[0] == "":
        sys.path[0] = os.getcwd()


def forget_prepared():
    """Drops what prepare_app made (or half made): the kernel module's own
    start must build its application and shell anew, not find them."""
    if "ipykernel.kernelapp" not in sys.modules:
        return
    from ipykernel.kernelapp import IPKernelApp
    from IPython.core.interactiveshell import InteractiveShell
    IPKernelApp.clear_instance()
    InteractiveShell.clear_instance()


def prepare_app():
    """Does, once in the template, the part of the kernel application's
    start that does not depend on which kernel it becomes (about a third
    of a forked kernel's CPU before it answered): the IPython application
    and its configuration, and the kernel's InteractiveShell (magics,
    formatters, completer, namespaces). Nothing in them is secret or any
    user's: no key, no socket, no thread (history is kept in memory; each
    kernel makes its own). Returns None, and kernels start as a cold
    one does after the imports, when the kernel is not one this knows."""
    if not CONFIG.get("prepare"):
        return None
    from IPython.core.application import BaseIPythonApplication
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.kernelapp import IPKernelApp
    kwargs = {}
    if MODULE == "sage.repl.ipython_kernel":
        from sage.repl.ipython_kernel.kernel import SageKernel
        kwargs["kernel_class"] = SageKernel
    elif MODULE != "ipykernel_launcher":
        return None
    app = IPKernelApp.instance(**kwargs)
    # First uses that cost each kernel milliseconds and are no kernel's
    # own: asyncio's policy object, OpenSSL's HMAC (signing), libzmq.
    import asyncio
    import hashlib
    import hmac
    asyncio.get_event_loop_policy()
    hmac.new(b"cellgate", b"", hashlib.sha256).hexdigest()
    # libzmq's first context in a process reads the CPUs and the protocols
    # database (NSS); a context starts no thread before its first socket.
    import zmq
    zmq.Context().term()
    # The command line is the kernel's (its connection file): parsed in
    # the kernel. Profile directory and configuration files: here.
    BaseIPythonApplication.initialize(app, [])
    shell_class = app.kernel_class.class_traits()["shell_class"].default_value

    own = "init_history" in shell_class.__dict__
    saved = shell_class.__dict__.get("init_history")
    shell_class.init_history = memory_history
    try:
        # The kernel's own construction finds this instance (a singleton)
        # and adopts it: see adopt_shell.
        shell = shell_class.instance(parent=app, profile_dir=app.profile_dir, compiler_class=XCachingCompiler)
    finally:
        if own:
            shell_class.init_history = saved
        else:
            del shell_class.init_history
    warm_shell(shell)
    quiet_below_handlers(app.log)
    return app


def quiet_below_handlers(log):
    """Sets the application's logger to the level of its handlers, below
    which they drop every record anyway: traitlets leaves the logger at
    DEBUG (the handlers filter), so each log.debug of the kernel's start
    and of every message it handles made a record for nothing (66 in a
    start, about 2 ms of its CPU). A change of IPKernelApp.log_level
    configures the logger anew, as in a cold kernel."""
    levels = [h.level for h in log.handlers]
    if levels and not log.propagate:
        log.setLevel(min(levels))


def warm_shell(shell):
    """Does, in the template, what a kernel's first cell would do for the
    first time and what is the same in every kernel: the compilation of
    tokenize's patterns (IPython's input transformers tokenize every
    cell) and the display formatters, made on first use. Half of a
    kernel's first execution (21 of 40 ms under cProfile, the pool's
    warm-up), each kernel again. Nothing runs in the shell's namespace,
    nothing enters its history."""
    shell.transform_cell("1+1\n")
    shell.display_formatter.format(2)


def run_prepared(app, connection_file, on_kernel):
    """Runs the kernel application the template prepared, as
    IPKernelApp.launch_instance would run a new one: what was done in the
    template is skipped, what belongs to this kernel is done here.
    on_kernel is called with the kernel once it is made."""
    from IPython.core.application import BaseIPythonApplication

    def own_part(self, argv=None):
        # What BaseIPythonApplication.initialize does that is this
        # process's: the crash handler, and the profile's directories in
        # this kernel's (empty) home.
        self.init_crash_handler()
        os.makedirs(self.profile_dir.location, exist_ok=True)
        self.profile_dir.check_dirs()

    BaseIPythonApplication.initialize = own_part
    init_kernel = app.init_kernel

    def init_kernel_adopting():
        init_kernel()
        adopt_shell(app.kernel)
        on_kernel(app.kernel)

    app.init_kernel = init_kernel_adopting
    app.connection_file = connection_file
    app.initialize([])
    app.start()


def pin_to_one_cpu():
    """Keeps this kernel on the CPU it runs on until its start is done
    (unpin_when_started), and returns the CPUs it may use, or None if it
    was not pinned. The start writes to thousands of pages it shares with
    the template, each a copy-on-write fault, and once the kernel has
    threads each fault flushes the TLB of every CPU its threads have run
    on, by interrupts (on a virtual machine, exits): a tenth of a forked
    kernel's CPU before it answered. Pinned at once after the fork, the
    kernel's memory has run on fewer CPUs, and most flushes stay local."""
    allowed = os.sched_getaffinity(0)
    cpu = libc.sched_getcpu()
    if len(allowed) < 2 or cpu not in allowed:
        return None
    os.sched_setaffinity(0, {cpu})
    return allowed


def unpin_when_started(kernel, allowed):
    """Gives every thread of the kernel its CPUs back as soon as the
    kernel's event loop runs, before it can run a cell: users' code runs
    on the CPUs a cold kernel's would."""
    if allowed is None:
        return

    def unpin():
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), allowed)
            except OSError:
                pass  # a thread that has ended meanwhile

    when_started(kernel, unpin)


def when_started(kernel, callback):
    """Calls callback in the kernel's event loop's first round, after the
    kernel's start and before it handles a request."""
    start = kernel.start

    def start_then_call_back():
        del kernel.start
        start()
        kernel.io_loop.add_callback(callback)

    kernel.start = start_then_call_back


PAGE = os.sysconf("SC_PAGE_SIZE")
PM_PRESENT, PM_EXCLUSIVE = 1 << 63, 1 << 56
MADV_POPULATE_WRITE = 23
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def private_writable():
    """This process's private writable mappings, as (start, end)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "rw-p":
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def pagemap(ranges):
    """The /proc/self/pagemap entries of the pages in ranges (bytes, 8 a
    page, one string a range)."""
    entries = []
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for lo, hi in ranges:
            entries.append(os.pread(fd, (hi - lo) // PAGE * 8, lo // PAGE * 8))
    finally:
        os.close(fd)
    return entries


def copied_since(ranges, before):
    """The runs of pages that were in the template (present) and are this
    process's own copies now (present, mapped once), as [address, count]."""
    import array
    after = pagemap(ranges)
    runs = []
    for (lo, _), b, a in zip(ranges, before, after):
        was, now = array.array("Q", b), array.array("Q", a)
        start = None
        for i in range(min(len(was), len(now)) + 1):
            copied = (i < len(was) and i < len(now) and was[i] & PM_PRESENT
                      and now[i] & PM_PRESENT and now[i] & PM_EXCLUSIVE)
            if copied and start is None:
                start = i
            elif not copied and start is not None:
                runs.append([lo + start * PAGE, i - start])
                start = None
    return runs


def copy_pages(runs):
    """Copies, in one system call a run, the template's pages this
    kernel's start will write to anyway. Copied while the kernel has one
    thread, they cost no TLB flush on other CPUs and no fault each: a
    sandboxed kernel's CPU from its fork to its first cell went from 215
    to 186 ms (p50 of 5 rounds of 10, pinned either way) for 0.5 MiB
    more PSS (36 MiB): the copies are mostly those its start would have
    made."""
    for address, count in runs:
        if libc.madvise(address, count * PAGE, MADV_POPULATE_WRITE) != 0 and ctypes.get_errno() == 22:
            return  # EINVAL: a Linux before 5.14; the start faults them in


def rehearse():
    """Starts one kernel in a child of the template, in a directory of its
    own in the template's /tmp, as kernels start (become_kernel,
    run_prepared), has it answer what every kernel is asked first
    (rehearse_requests), and returns the pages it copied on write by then
    (copied_since), or [] if it failed. Its sockets and files are never
    used: no one connects, and it ends there."""
    import shutil
    import tempfile
    ranges = private_writable()
    before = pagemap(ranges)
    place = tempfile.mkdtemp(prefix="cellgate-rehearsal-")
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(result_r)
            signal.alarm(20)  # SIGALRM ends it, should it hang
            # What the kernel application prints goes to no kernel.
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.chdir(place)
            connection_file = os.path.join(place, "kernel.json")
            with open(connection_file, "w") as f:
                json.dump({"transport": "ipc", "ip": os.path.join(place, "s"), "shell_port": 1, "iopub_port": 2,
                           "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": os.urandom(16).hex(),
                           "signature_scheme": "hmac-sha256", "kernel_name": ""}, f)
            env = dict(TEMPLATE_ENV) if CONFIG["keep_env"] else {}
            env.update({"HOME": place, "PWD": place, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            argv = ["-f", connection_file]
            reseed()
            become_kernel(argv, env)

            def report():
                with os.fdopen(result_w, "w") as f:
                    json.dump(copied_since(ranges, before), f)
                os._exit(0)

            run_prepared(PREPARED, connection_file,
                         lambda kernel: when_started(kernel, lambda: rehearse_requests(kernel, report)))
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(result_w)
    with os.fdopen(result_r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(place, ignore_errors=True)
    if status != 0 or not data:
        print("cellgate fork server: the rehearsal kernel failed (%s); kernels copy pages as they write" % status,
              file=sys.stderr, flush=True)
        return []
    return json.loads(data)


# What every kernel is asked first: the gateway's kernel_info, its
# warm-up (a displayed result), a reader's first cell.
REHEARSED_REQUESTS = (
    ("kernel_info_request", {}),
    ("execute_request", {"code": "1+1", "silent": False, "store_history": True, "user_expressions": {},
                         "allow_stdin": False, "stop_on_error": True}),
)


def rehearse_requests(kernel, then):
    """Has the rehearsal kernel handle REHEARSED_REQUESTS as if they came
    on its shell socket (signed with its own key; the replies go to no
    one), then calls then. The pages those first requests write are a
    fifth of what a kernel copies from the template by its first result
    (about 750 of 4,650 pages, python3); written once the kernel has
    threads on every CPU, each copy also costs a TLB flush on the others,
    while the spare copies them in one call per run, single-threaded."""
    import zmq
    session = kernel.session
    for msg_type, content in REHEARSED_REQUESTS:
        frames = session.serialize(session.msg(msg_type, content), ident=[b"rehearsal"])
        kernel.schedule_dispatch(kernel.dispatch_shell, [zmq.Frame(f) for f in frames])

    async def handled():
        # The results' iopub messages are serialized by now; their sending
        # (the iopub thread) writes pages of its own, a moment later.
        kernel.io_loop.call_later(0.05, then)

    kernel.schedule_dispatch(handled)


def memory_history(shell):
    """InteractiveShell.init_history, with the history database in memory:
    the gateway starts every IPython kernel so (cold ones with
    --HistoryManager.hist_file=:memory:), as its home is a tmpfs that ends
    with it. No sqlite file to create and no thread to write it."""
    from IPython.core.history import HistoryManager
    shell.history_manager = HistoryManager(shell=shell, parent=shell, hist_file=":memory:")
    shell.configurables.append(shell.history_manager)


def adopt_shell(kernel):
    """Makes the template's shell this kernel's: what its construction
    took from the template's process (cwd, environment, history in
    memory) is taken again from the kernel's."""
    shell = kernel.shell
    shell.kernel = kernel
    shell.parent = kernel
    shell.starting_dir = os.getcwd()
    # %store's database: its directory is made when it is opened.
    from pickleshare import PickleShareDB
    shell.db = PickleShareDB(os.path.join(shell.profile_dir.location, "db"))
    shell.configurables.remove(shell.history_manager)
    shell.history_manager.db.close()
    memory_history(shell)
    # In, Out, _ih, _oh and _dh are the history's lists: the new ones.
    shell.init_user_ns()
    shell.init_environment()


def reseed():
    """Nothing random may be shared between forks: Python's and numpy's
    generators, and Sage's (its own, and PARI's, GAP's, NTL's, reseeded
    from it when next used) start anew in each, from the system's
    entropy."""
    import random
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    randstate = sys.modules.get("sage.misc.randstate")
    if randstate is not None:
        randstate.set_random_seed()


def sage_directories():
    """Sage's temporary directories name a place in HOME, made when Sage
    was imported: the template's HOME is not the kernel's."""
    misc = sys.modules.get("sage.misc.misc")
    for name in ("SAGE_TMP", "SAGE_TMP_INTERFACE", "ECL_TMP", "SPYX_TMP"):
        d = getattr(misc, name, None)
        if d is not None:
            os.makedirs(str(d), exist_ok=True)


def no_user_namespaces():
    """Forbids new user namespaces below the template's, as bwrap's
    --disable-userns does for a cold kernel: the usual door to kernel
    attack surface. The limit counts in every namespace below this one, so
    a kernel (or any process it forks: a threaded kernel could not unshare
    one anyway) gets ENOSPC. The template needs none: each kernel's
    namespaces are made in the template's user namespace."""
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def preload():
    # What ipykernel sets before any kernel code runs, and matplotlib reads
    # once, when it is imported: imported here, it must be imported so.
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    for name in CONFIG["preload"]:
        try:
            __import__(name)
        except Exception:
            print("cellgate fork server: preload %s failed" % name, file=sys.stderr, flush=True)
            traceback.print_exc()
    if CONFIG["warmup"]:
        try:
            exec(CONFIG["warmup"], {})
        except Exception:
            print("cellgate fork server: warm-up failed", file=sys.stderr, flush=True)
            traceback.print_exc()
    global PREPARED, COPIED
    try:
        PREPARED = prepare_app()
    except Exception:
        print("cellgate fork server: preparing the kernel application failed; kernels start it themselves",
              file=sys.stderr, flush=True)
        traceback.print_exc()
        forget_prepared()
    # A fork copies the calling thread only: a thread started by an import
    # (a pool, a timer) would be missing in every kernel, any lock it held
    # held for ever.
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        sys.exit("cellgate fork server: the preload started threads (%d tasks): not forking" % len(threads))
    gc.collect()
    # Pages the template touched stay shared with every fork: a collection
    # in a kernel must not touch (and so copy) them.
    gc.freeze()
    if PREPARED is not None:
        COPIED = rehearse()


def module_files():
    """The files of every module imported so far, and their directories:
    the gateway replaces the template when one of them changes."""
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if isinstance(f, str) and os.path.isabs(f):
            files.add(f)
            files.add(os.path.dirname(f))
    return sorted(files)


def serve():
    ctrl = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    files = module_files()
    for i in range(0, len(files), 200):
        ctrl.send(json.dumps({"files": files[i:i + 200]}).encode())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(ctrl, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    pids = Pids()
    send_pids(ctrl, {"ready": True, "pid": os.getpid()}, os.getpid())
    pids.spare = make_spare(pids)
    while True:
        for key, _ in sel.select():
            if key.fileobj is ctrl:
                try:
                    msg, fds, _, _ = socket.recv_fds(ctrl, 1 << 20, 8)
                except InterruptedError:
                    continue
                if not msg:
                    os._exit(0)  # the gateway is gone
                launch(ctrl, pids, json.loads(msg), fds)
            else:
                os.read(wake_r, 4096)
                reap(ctrl, pids)


def send_pids(ctrl, msg, *pids):
    """Sends msg with a pidfd of each of pids: the gateway reads their host
    pids from the pidfds (its pid namespace is not the template's),
    without a walk of every process on the host."""
    pidfds = []
    try:
        for pid in pids:
            pidfds.append(os.pidfd_open(pid))
        socket.send_fds(ctrl, [json.dumps(msg).encode()], pidfds)
    finally:
        for fd in pidfds:
            os.close(fd)


class Pids:
    """The template's children: each kernel's pid 1 (by the kernel's pid),
    the pid 1s not reaped yet, and the spare (or None). A pid 1 is killed
    when its kernel is reaped, and only while it is unreaped, so the pid
    is still its own."""

    def __init__(self):
        self.own_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.pid1_of = {}
        self.pid1s = set()
        self.spare = None
        self.lost_spares = set()  # spares that died before their request

    def end_pid1(self, kernel):
        pid1 = self.pid1_of.pop(kernel, None)
        if pid1 in self.pid1s:
            os.kill(pid1, signal.SIGKILL)


class Spare:
    """A kernel made ahead of its request (make_spare): forked, its pages
    copied, waiting on sock for the request and its descriptors."""

    def __init__(self, pid, pid1, sock):
        self.pid, self.pid1, self.sock = pid, pid1, sock


def fork_child(pids, body):
    """Forks a child that runs body (which must not return) as pid 2 of a
    pid namespace of its own whose pid 1 spawn_pid1 starts, in a process
    group of its own; returns (pid, pid 1). Raises OSError."""
    pid1 = None
    try:
        check(libc.unshare(CLONE_NEWPID), "unshare pid namespace")
        pid1 = spawn_pid1()
        pid = os.fork()
    except OSError:
        if pid1 is not None:
            os.kill(pid1, signal.SIGKILL)
            os.waitpid(pid1, 0)
        check(libc.setns(pids.own_ns, CLONE_NEWPID), "back to the template's pid namespace")
        raise
    if pid == 0:
        code = 127
        try:
            body()
        except SystemExit as e:
            # The kernel's own way out: its code is how it ended.
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    # The template's next children are in its own pid namespace again,
    # until the next fork unshares one.
    check(libc.setns(pids.own_ns, CLONE_NEWPID), "back to the template's pid namespace")
    pids.pid1_of[pid] = pid1
    pids.pid1s.add(pid1)
    # The child makes itself a group too, but the gateway kills the kernel
    # by that group as soon as it has the pid: the group must exist before
    # the pid is told, or a kill that comes at once (a start cancelled
    # right after its launch) finds no group and the kernel runs on.
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # it has already ended: the reap tells
    return pid, pid1


def make_spare(pids):
    """Makes the next kernel ahead of its request: the fork, and the copy
    of the pages its start writes, about 40 ms of a forked kernel's way to
    ready, are then done while the template waits. The spare holds nothing
    of any kernel's (no key, no uid, no file) until its request comes;
    named cellgate-spare until then. None if it cannot be made (the next
    launch forks then)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def wait_for_request():
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        set_name("cellgate-spare")
        signal.set_wakeup_fd(-1)
        close_all_but({0, 1, 2, theirs.fileno()})
        copy_pages(COPIED)
        isolate()
        msg, fds, _, _ = socket.recv_fds(theirs, 1 << 20, 8)
        if not msg:
            os._exit(0)  # the template is done with it
        theirs.close()
        kernel(json.loads(msg), fds, isolated=True)

    try:
        pid, pid1 = fork_child(pids, wait_for_request)
    except OSError:
        traceback.print_exc()
        mine.close()
        return None
    finally:
        theirs.close()
    return Spare(pid, pid1, mine)


def spawn_pid1():
    """Starts the next kernel's pid 1 (in the pid namespace the template
    has just unshared for its children): a small reaper (catatonit), exec'd
    without capabilities and with no_new_privs, in a process group of its
    own (the gateway's interrupt of a kernel's group must not reach it). A
    fork of the template as pid 1 would cost each kernel the copy of the
    template's page tables, and its exit their teardown, for a process
    that only waits: a kernel's start had two such processes."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
        return os.posix_spawn(CONFIG["pid1"][0], CONFIG["pid1"], {}, file_actions=actions, setpgroup=0,
                              setsigmask=(), setsigdef=range(1, signal.NSIG))
    finally:
        os.close(null)


def launch(ctrl, pids, req, fds):
    if len(fds) != 6:
        for fd in fds:
            os.close(fd)
        ctrl.send(json.dumps({"id": req.get("id"), "error": "want 6 descriptors, got %d" % len(fds)}).encode())
        return
    pid = pid1 = failure = None
    spare, pids.spare = pids.spare, None
    if spare is not None:
        try:
            socket.send_fds(spare.sock, [json.dumps(req).encode()], fds)
            pid, pid1 = spare.pid, spare.pid1
        except OSError:
            pids.lost_spares.add(spare.pid)  # it died: the reap ends its pid 1
        spare.sock.close()
    if pid is None:
        def fork_and_copy():
            copy_pages(COPIED)
            kernel(req, fds)
        try:
            pid, pid1 = fork_child(pids, fork_and_copy)
        except OSError as e:
            failure = str(e)
    for fd in fds:
        os.close(fd)
    if pid is None:
        ctrl.send(json.dumps({"id": req["id"], "error": "fork: " + failure}).encode())
    else:
        send_pids(ctrl, {"id": req["id"], "pid": pid}, pid, pid1)
    pids.spare = make_spare(pids)


def reap(ctrl, pids):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in pids.pid1s:
            # Its kernel was killed with its namespace, or is reaped next.
            pids.pid1s.discard(pid)
            continue
        if pids.spare is not None and pid == pids.spare.pid:
            pids.spare.sock.close()
            pids.spare = None
            pids.lost_spares.add(pid)
        if pid in pids.lost_spares:
            # Never a kernel: the gateway knows nothing of it.
            pids.lost_spares.discard(pid)
            pids.end_pid1(pid)
            continue
        # Its pid 1 ends the processes the kernel left in its namespace.
        pids.end_pid1(pid)
        ctrl.send(json.dumps({"exited": pid, "code": exit_code(status)}).encode())


set_name("cellgate-tmpl")
no_user_namespaces()
preload()
serve()
