# A fork bomb: the kernel forks until refused, and every child forks on
# for ever, as a real bomb does. One JSON line when the kernel's own fork
# fails: {"uid", "errno" (name), "forked" (its successful forks)}; the
# children go on trying.
import errno, json, os, time

r = {"uid": os.getuid()}
n = 0
try:
    while True:
        if os.fork() == 0:
            try:  # a child never returns into the kernel's code
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.05)
            finally:
                os._exit(0)
        n += 1
except OSError as e:
    r["errno"] = errno.errorcode.get(e.errno, str(e))
r["forked"] = n
print(json.dumps(r), flush=True)
