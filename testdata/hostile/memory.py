# Memory: one allocation of ten times the limit, then 16 MiB at a time
# until refused. One JSON line: {"big": "MemoryError" or "allocated",
# "grew": bytes held when refused}.
#
# ARGS: "limit": the address space limit, in bytes.
import json

limit = int(ARGS["limit"])
r = {}
try:
    big = bytearray(10 * limit)
    r["big"] = "allocated"
    del big
except MemoryError:
    r["big"] = "MemoryError"
chunks = []
try:
    while True:
        chunks.append(bytearray(16 << 20))
except MemoryError:
    r["grew"] = len(chunks) * (16 << 20)
del chunks
print(json.dumps(r), flush=True)
