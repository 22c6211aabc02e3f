# What of the host the kernel can reach: it probes the paths it is given
# (list a directory, read a file's first bytes, or the error), lists the
# processes /proc shows it and its own open descriptors, and writes where
# it must not and where it must. One JSON line.
#
# ARGS: "paths": the paths to probe.
#
# Output: "fds" (taken first, before anything else opens one: the listing's
# own descriptor is among them), "paths" {path: {"listed": [names]} or
# {"read": text} or {"error": "ENOENT"}}, "procs" {pid: {"uid", "cmd"}},
# "denied" and "allowed" {path: "written" or the error}.
import errno, json, os

fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))


def err(e):
    return errno.errorcode.get(e.errno, str(e))


def probe(p):
    try:
        os.lstat(p)
        if os.path.isdir(p):
            return {"listed": sorted(os.listdir(p))}
        with open(p, "rb") as f:
            return {"read": f.read(80).decode("latin-1")}
    except OSError as e:
        return {"error": err(e)}


def write(p):
    # A file that exists is opened for writing, not truncated: were the
    # sandbox broken, /etc/passwd would still be whole.
    existed = os.path.lexists(p)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if not existed:
                os.write(fd, b"x")
        finally:
            os.close(fd)
        return "written"
    except OSError as e:
        return err(e)


procs = {}
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            status = open("/proc/%s/status" % name).read()
            uid = [l.split()[1] for l in status.splitlines() if l.startswith("Uid:")][0]
            cmd = open("/proc/%s/cmdline" % name, "rb").read().replace(b"\0", b" ").decode("latin-1")
            procs[name] = {"uid": int(uid), "cmd": cmd}
        except OSError:
            pass
home = os.environ["HOME"]
r = {
    "fds": fds,
    "paths": {p: probe(p) for p in ARGS.get("paths", [])},
    "procs": procs,
    # Read-only or not there: the system, the sandbox's root, its /dev and
    # /proc, the synthetic /etc/passwd, the kernel's host name.
    "denied": {p: write(p) for p in ("/usr/cellgate-hostile", "/etc/cellgate-hostile", "/cellgate-hostile",
                                     "/dev/cellgate-hostile", "/proc/cellgate-hostile", "/etc/passwd",
                                     "/proc/sys/kernel/hostname")},
    # The kernel's own tmpfs: its working directory, /tmp, /var/tmp, HOME, /dev/shm.
    "allowed": {p: write(p) for p in ("out.txt", "/tmp/x", "/var/tmp/y", home + "/x", "/dev/shm/x")},
}
print(json.dumps(r), flush=True)
