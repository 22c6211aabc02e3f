# Signals from the sandbox: probes (signal 0) of host pids it is given,
# SIGKILL to its parent and to pid 1, then SIGKILL to -1 (everything it may
# signal), which must reach its own child, a sleep. One JSON line:
# {"uid", "pid", "ppid", "probe" {name: "sent" or the error},
# "kill parent", "kill 1" ("sent" or the error), "parent alive",
# "init alive" (after the kills), "child" (the child's returncode: -9 if
# SIGKILL reached it)}.
#
# ARGS: "probe" {name: host pid}, optional.
import errno, json, os, signal, subprocess, time


def kill(pid, sig):
    try:
        os.kill(pid, sig)
        return "sent"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


child = subprocess.Popen(["/usr/bin/sleep", "120"])
r = {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid()}
r["probe"] = {name: kill(int(pid), 0) for name, pid in ARGS.get("probe", {}).items()}
r["kill parent"] = kill(os.getppid(), signal.SIGKILL)
r["kill 1"] = kill(1, signal.SIGKILL)
time.sleep(0.3)
r["parent alive"] = os.path.exists("/proc/%d" % r["ppid"])
r["init alive"] = os.path.exists("/proc/1")
os.kill(-1, signal.SIGKILL)
r["child"] = child.wait()
print(json.dumps(r), flush=True)
