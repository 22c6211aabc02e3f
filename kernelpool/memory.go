package kernelpool

import "github.com/cellgate/cellgate/sandbox"

// DefaultKernelMemory is what the pool assumes a ready kernel costs until
// it has measured one of its kernelspec: a cold ipykernel is about 52 MiB.
const DefaultKernelMemory = 64 << 20

// treePSS is the proportional set size of pid and its descendants: what
// they cost the machine, with the pages they share divided among their
// sharers. It is what the sandbox holds against a kernel's memory limit.
func treePSS(pid int) (int64, error) {
	return sandbox.TreeMemory(pid)
}
