# A daemon that tries to outlive its kernel: a double fork into a session
# of its own, SIGTERM, SIGHUP and SIGINT ignored, named cgdaemon (as ps and
# /proc/PID/status show it), appending "." to a heartbeat file every 50 ms.
# The kernel goes on once the middle process is gone. One JSON line:
# {"uid", "daemon": "started"}.
#
# ARGS: "heartbeat": the heartbeat file's path.
import ctypes, json, os, signal, time

pid = os.fork()
if pid == 0:
    try:  # whatever happens, a child never returns into the kernel's code
        os.setsid()
        if os.fork() == 0:
            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(s, signal.SIG_IGN)
            ctypes.CDLL(None).prctl(15, b"cgdaemon", 0, 0, 0)  # PR_SET_NAME
            while True:
                with open(ARGS["heartbeat"], "a") as f:
                    f.write(".")
                time.sleep(0.05)
    finally:
        os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"uid": os.getuid(), "daemon": "started"}), flush=True)
