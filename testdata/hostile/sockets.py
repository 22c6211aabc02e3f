# The socket families: which a kernel can open sockets of (the seccomp
# filter allows AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK with
# NETLINK_ROUTE, and answers EAFNOSUPPORT to the rest), and whether what
# a kernel needs still works. One JSON line.
#
# ARGS: none.
#
# Output:
#   "reach", "socketpair reach": the families 0..63 whose socket() (or
#     socketpair()) with an invalid type (15) gets the kernel's own EINVAL,
#     that is, gets past the filter; refused ones get EAFNOSUPPORT.
#   "netlink reach": the same for AF_NETLINK's protocols 0..31.
#   "open" {name: "ok" or the error}: real sockets of named families.
#   "echo" {name: "echoed" or the error}: a byte over the kernel's own
#     IPv4 and IPv6 loopback and over a unix socketpair.
#   "interfaces": socket.if_nameindex() (netlink), or the error.
#   "getaddrinfo": localhost's addresses with AI_ADDRCONFIG (netlink), or
#     the error.
import errno, json, socket

SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_RDM, SOCK_SEQPACKET = 1, 2, 3, 4, 5
BAD_TYPE = 15  # below SOCK_TYPE_MASK, not below SOCK_MAX: EINVAL from the kernel


def err(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)


def try_open(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return "ok"
    except OSError as e:
        return err(e)


def reaches(make):
    try:
        for s in make():
            s.close()
        return True  # no kernel takes type 15; counted as reaching it
    except OSError as e:
        return e.errno != errno.EAFNOSUPPORT


NAMED = {
    # What a kernel needs.
    "unix stream": (1, SOCK_STREAM, 0),
    "unix dgram": (1, SOCK_DGRAM, 0),
    "unix seqpacket": (1, SOCK_SEQPACKET, 0),
    "inet tcp": (2, SOCK_STREAM, 0),
    "inet udp": (2, SOCK_DGRAM, 0),
    "inet6 tcp": (10, SOCK_STREAM, 0),
    "inet6 udp": (10, SOCK_DGRAM, 0),
    "netlink route": (16, SOCK_RAW, 0),
    # What it must not have.
    "unspec": (0, SOCK_STREAM, 0),
    "vsock stream": (40, SOCK_STREAM, 0),
    "vsock dgram": (40, SOCK_DGRAM, 0),
    "vsock seqpacket": (40, SOCK_SEQPACKET, 0),
    "packet raw": (17, SOCK_RAW, 0x0300),  # ETH_P_ALL, network order
    "packet dgram": (17, SOCK_DGRAM, 0x0300),
    "alg": (38, SOCK_SEQPACKET, 0),
    "bluetooth rfcomm": (31, SOCK_STREAM, 3),
    "bluetooth hci": (31, SOCK_RAW, 1),
    "netlink sock_diag": (16, SOCK_RAW, 4),
    "netlink audit": (16, SOCK_RAW, 9),
    "netlink netfilter": (16, SOCK_RAW, 12),
    "netlink uevent": (16, SOCK_DGRAM, 15),
    "netlink generic": (16, SOCK_RAW, 16),
    "key": (15, SOCK_RAW, 2),
    "rds": (21, SOCK_SEQPACKET, 0),
    "llc": (26, SOCK_DGRAM, 0),
    "can": (29, SOCK_RAW, 1),
    "tipc": (30, SOCK_RDM, 0),
    "kcm": (41, SOCK_DGRAM, 0),
    "qipcrtr": (42, SOCK_DGRAM, 0),
    "smc": (43, SOCK_STREAM, 0),
    "xdp": (44, SOCK_RAW, 0),
    "mctp": (45, SOCK_DGRAM, 0),
}


def echo_over(family, host):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as srv:
            srv.bind((host, 0))
            srv.listen()
            with socket.create_connection(srv.getsockname()[:2], timeout=3) as c:
                conn, _ = srv.accept()
                with conn:
                    c.sendall(b"x")
                    return "echoed" if conn.recv(1) == b"x" else "lost"
    except OSError as e:
        return err(e)


def echo_pair():
    try:
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"x")
            return "echoed" if b.recv(1) == b"x" else "lost"
    except OSError as e:
        return err(e)


r = {
    "reach": [f for f in range(64) if reaches(lambda: [socket.socket(f, BAD_TYPE, 0)])],
    "socketpair reach": [f for f in range(64) if reaches(lambda: socket.socketpair(f, BAD_TYPE, 0))],
    "netlink reach": [p for p in range(32) if reaches(lambda: [socket.socket(16, BAD_TYPE, p)])],
    "open": {name: try_open(*args) for name, args in NAMED.items()},
    "echo": {"inet": echo_over(socket.AF_INET, "127.0.0.1"), "inet6": echo_over(socket.AF_INET6, "::1"),
             "unix pair": echo_pair()},
}
try:
    r["interfaces"] = sorted(n for _, n in socket.if_nameindex())
except OSError as e:
    r["interfaces"] = err(e)
try:
    r["getaddrinfo"] = sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM,
                                                                    flags=socket.AI_ADDRCONFIG)})
except OSError as e:
    r["getaddrinfo"] = str(e)
print(json.dumps(r), flush=True)
