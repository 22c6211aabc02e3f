# The execute floor as jupyter_client sees it: connects to a running
# kernel through its connection file (argv[1]; or, with argv[1] "launch",
# starts an ipykernel of its own with jupyter_client's KernelManager, as
# Jupyter Server would: unsandboxed, over tcp) and, for every line read on
# stdin, sends one execute_request of "1+1" (store_history, as
# kernelpool.Execute sends it) and waits for its execute_reply and the
# status: idle it caused; prints the round trip in milliseconds.
import os
import sys
import time

from jupyter_client import BlockingKernelClient, KernelManager

if sys.argv[1] == "launch":
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
else:
    kc = BlockingKernelClient(connection_file=sys.argv[1])
    kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=60)
# wait_for_ready's probes leave their iopub messages behind.
while True:
    try:
        kc.get_iopub_msg(timeout=0.2)
    except Exception:
        break
print("ready", flush=True)
for _ in sys.stdin:
    began = time.perf_counter()
    msg_id = kc.execute("1+1", store_history=True)
    replied = idle = False
    while not (replied and idle):
        if not replied:
            reply = kc.get_shell_msg(timeout=10)
            replied = reply["parent_header"].get("msg_id") == msg_id
        if not idle:
            msg = kc.get_iopub_msg(timeout=10)
            idle = (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle")
    print("%.4f" % ((time.perf_counter() - began) * 1000), flush=True)
kc.stop_channels()
if sys.argv[1] == "launch":
    km.shutdown_kernel(now=True)
# Not through the interpreter's teardown: jupyter_client's finalizers
# log into a logging module already torn down.
sys.stdout.flush()
os._exit(0)
