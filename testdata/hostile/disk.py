# Disk: one file past the file size limit, then /tmp filled 256 KiB at a
# time, then one more write in each of the kernel's places (working
# directory, /tmp, HOME, /dev/shm: one tmpfs, so all are full), then empty
# files until the inodes run out. It frees what it took. One JSON line:
# {"file size": "EFBIG" or "written", "fill": the error, "filled": bytes,
# "after fill" {place: the error or "written"}, "inodes": the error,
# "files": files made}.
#
# ARGS: "file_size": the file size limit, in bytes.
import errno, json, os, shutil


def err(e):
    return errno.errorcode.get(e.errno, str(e))


CHUNK = 256 << 10
r = {}
try:
    with open("/tmp/big", "wb") as f:
        f.write(b"\0" * (int(ARGS["file_size"]) + 1))
    r["file size"] = "written"
except OSError as e:
    r["file size"] = err(e)
os.remove("/tmp/big")
os.mkdir("/tmp/fill")
n = 0
try:
    while True:
        with open("/tmp/fill/%d" % n, "wb") as f:
            f.write(b"\0" * CHUNK)
        n += 1
except OSError as e:
    r["fill"] = err(e)
r["filled"] = n * CHUNK
after = {}
for place in (".", "/tmp", os.environ["HOME"], "/dev/shm"):
    p = os.path.join(place, "one-more")
    try:
        with open(p, "wb") as f:
            f.write(b"\0" * CHUNK)
        after[place] = "written"
    except OSError as e:
        after[place] = err(e)
    if os.path.lexists(p):
        os.remove(p)
r["after fill"] = after
shutil.rmtree("/tmp/fill")
os.mkdir("/tmp/inodes")
m = 0
try:
    while True:
        open("/tmp/inodes/%d" % m, "w").close()
        m += 1
except OSError as e:
    r["inodes"] = err(e)
r["files"] = m
shutil.rmtree("/tmp/inodes")
print(json.dumps(r), flush=True)
