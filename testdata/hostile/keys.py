# Secrets in the kernel's own memory: scans every readable region of
# /proc/self/maps through /proc/self/mem for byte strings. A kernel forked
# from a template must find its own HMAC key there and no other kernel's.
# One JSON line.
#
# ARGS: "needles" {name: [head, tail]}: a needle is head immediately
#   followed by tail. The caller splits each secret in two so that this
#   code (the cell's text, ARGS, every string made here) never holds it
#   whole: only memory that held it before the scan can match.
#
# Output:
#   "found" {name: how many places hold the needle},
#   "regions": regions read, "bytes": bytes read, "unreadable": regions
#     that failed part way ([vvar], file mappings past their file's end).
import json

CHUNK = 1 << 20
needles = {name: (head.encode(), tail.encode()) for name, (head, tail) in ARGS["needles"].items()}
longest = max(len(h) + len(t) for h, t in needles.values())
found = {name: 0 for name in needles}
regions = read = unreadable = 0
with open("/proc/self/maps") as f:
    maps = f.read().splitlines()
with open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps:
        fields = line.split()
        if fields[1][0] != "r" or fields[-1] in ("[vvar]", "[vsyscall]"):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        regions += 1
        for pos in range(lo, hi, CHUNK):
            try:
                mem.seek(pos)
                chunk = mem.read(min(hi - pos, CHUNK + longest - 1))
            except OSError:
                unreadable += 1
                break
            read += len(chunk)
            for name, (head, tail) in needles.items():
                i = chunk.find(head)
                # Starts in the overlap with the next chunk count there.
                while 0 <= i < CHUNK:
                    if chunk[i + len(head):i + len(head) + len(tail)] == tail:
                        found[name] += 1
                    i = chunk.find(head, i + 1)
            del chunk
print(json.dumps({"found": found, "regions": regions, "bytes": read, "unreadable": unreadable}), flush=True)
