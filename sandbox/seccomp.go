package sandbox

import (
	"encoding/binary"
	"runtime"

	"golang.org/x/sys/unix"
)

// deniedSyscalls fail with EPERM in the sandbox. None is needed by Python,
// IPython or Sage; each is kernel attack surface an unprivileged process
// otherwise keeps: io_uring (a long line of privilege escalations),
// userfaultfd (a staple of kernel exploits), bpf and perf_event_open
// (further surface and side channels, often already restricted by
// sysctl), the key management calls (the kernel keyrings are not
// namespaced), and ptrace (not needed to run code, and the sandbox has no
// debugger to offer).
var deniedSyscalls = []uint32{
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_USERFAULTFD, unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN,
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	unix.SYS_PTRACE,
}

// seccompFilter returns the classic BPF program bwrap loads (--seccomp)
// before starting the kernel, in the kernel's struct sock_filter layout;
// nil on an architecture it does not know, where the sandbox runs without
// a filter (Describe says so).
//
// Any other architecture's calling convention (i386 through int 0x80 on
// x86_64) and, on x86_64, the x32 numbers (bit 30) would slip past a list
// of native numbers: they are denied as a whole.
func seccompFilter() []byte {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		return nil
	}
	const (
		offNr   = 0 // offsetof(struct seccomp_data, nr)
		offArch = 4 // offsetof(struct seccomp_data, arch)
		x32Bit  = 0x40000000
	)
	type insn struct {
		code   uint16
		jt, jf uint8
		k      uint32
		deny   bool // jt jumps to the deny return
	}
	prog := []insn{
		{code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: offArch},
		{code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, k: arch, jt: 1},
		{code: unix.BPF_RET | unix.BPF_K, k: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: offNr},
	}
	if arch == unix.AUDIT_ARCH_X86_64 {
		prog = append(prog, insn{code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, k: x32Bit, deny: true})
	}
	for _, nr := range deniedSyscalls {
		prog = append(prog, insn{code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, k: nr, deny: true})
	}
	prog = append(prog,
		insn{code: unix.BPF_RET | unix.BPF_K, k: unix.SECCOMP_RET_ALLOW},
		insn{code: unix.BPF_RET | unix.BPF_K, k: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
	)
	denyAt := len(prog) - 1
	out := make([]byte, 0, 8*len(prog))
	for i, in := range prog {
		if in.deny {
			in.jt = uint8(denyAt - i - 1) // fewer than 256 instructions
		}
		out = binary.NativeEndian.AppendUint16(out, in.code)
		out = append(out, in.jt, in.jf)
		out = binary.NativeEndian.AppendUint32(out, in.k)
	}
	return out
}
