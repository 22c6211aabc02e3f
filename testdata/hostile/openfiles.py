# Descriptors: files opened until refused, then sockets until refused;
# all closed again. One JSON line: {"files": the error, "opened": files
# open when refused, "sockets": the error}.
import errno, json, socket

fs = []
r = {}
try:
    while True:
        fs.append(open("/dev/null"))
except OSError as e:
    r["files"] = errno.errorcode.get(e.errno, str(e))
r["opened"] = len(fs)
for f in fs:
    f.close()
socks = []
try:
    while True:
        socks.append(socket.socket())
except OSError as e:
    r["sockets"] = errno.errorcode.get(e.errno, str(e))
for s in socks:
    s.close()
print(json.dumps(r), flush=True)
