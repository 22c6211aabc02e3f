# Traps for the gateway, which works as root in the kernel's directories:
# symlinks to what it must not read or upload (ARGS "links" {link: target};
# a relative link is made in the working directory), a symlink in a
# subdirectory, a FIFO (a blocking reader would hang the uploader), and one
# regular file, ok.txt, holding "fine". One JSON line: {"planted": [names]}.
import json, os

for name, target in ARGS["links"].items():
    os.symlink(target, name)
os.mkdir("sub")
os.symlink("/etc/passwd", "sub/passwd")
os.mkfifo("fifo")
with open("ok.txt", "w") as f:
    f.write("fine")
print(json.dumps({"planted": sorted(list(ARGS["links"]) + ["sub/passwd", "fifo", "ok.txt"])}), flush=True)
