# The kernel's network: its interfaces (by if_nameindex and /proc/net/dev),
# whether /sys/class/net shows the host's, whether it reaches what it is
# given to try, and whether its own loopback works. One JSON line.
#
# ARGS: "connect" {name: ["inet", host, port] or ["inet6", host, port] or
# ["unix", path] or ["abstract", name]}.
#
# Output: "interfaces", "proc net dev", "sys", "connect" {name: "connected"
# or the error}, "own loopback" ("connected" or the error).
import errno, json, os, socket


def err(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)


def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        return "connected"
    except OSError as e:
        return err(e)
    finally:
        s.close()


def target(kind, *addr):
    if kind == "unix":
        return socket.AF_UNIX, addr[0]
    if kind == "abstract":
        return socket.AF_UNIX, "\0" + addr[0]
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}[kind]
    return family, (addr[0], int(addr[1]))


r = {"interfaces": sorted(n for _, n in socket.if_nameindex())}
r["proc net dev"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
r["sys"] = os.path.exists("/sys/class/net")
r["connect"] = {name: connect(*target(*t)) for name, t in ARGS.get("connect", {}).items()}
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
r["own loopback"] = connect(socket.AF_INET, srv.getsockname())
srv.close()
print(json.dumps(r), flush=True)
