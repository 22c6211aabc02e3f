"""An ipykernel that misbehaves on purpose, for kernelpool's tests.

Usage: misbehaving_kernel.py MODE -f CONNECTION_FILE, where MODE is
  ignore-shutdown  never answers shutdown_request (dies of SIGTERM)
  ignore-term      never answers shutdown_request and ignores SIGTERM
  no-idle          never publishes the status: idle that ends an execution,
                   as if the kernel's PUB socket had dropped it
"""

import signal
import sys

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp

MODE = sys.argv.pop(1)


class MisbehavingKernel(IPythonKernel):
    async def shutdown_request(self, stream, ident, parent):
        if MODE in ("ignore-shutdown", "ignore-term"):
            return
        await super().shutdown_request(stream, ident, parent)

    def _publish_status(self, status, channel, parent=None):
        if MODE == "no-idle" and status == "idle":
            request = parent or self.get_parent(channel)
            if request.get("header", {}).get("msg_type") == "execute_request":
                return
        super()._publish_status(status, channel, parent)


if MODE == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
IPKernelApp.launch_instance(kernel_class=MisbehavingKernel)
