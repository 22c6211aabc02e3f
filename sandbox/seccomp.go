package sandbox

import (
	"encoding/binary"
	"fmt"
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

// socketFamilies are the address families socket(2) and socketpair(2)
// accept in the sandbox: unix sockets (the kernel's Jupyter sockets, zmq's
// and asyncio's internal pairs, multiprocessing) and IPv4/IPv6, which
// reach only the kernel's own loopback. AF_NETLINK is accepted with
// protocol NETLINK_ROUTE only (socketNetlinkProtocol): glibc's
// if_nameindex and getifaddrs, and getaddrinfo with AI_ADDRCONFIG, ask the
// kernel for the interfaces and addresses that way; in the kernel's network
// namespace it shows its loopback only, and changing anything needs
// CAP_NET_ADMIN, which the kernel lacks. Every other family fails with
// EAFNOSUPPORT, as on a kernel built without it, so Python code gets a
// clean OSError: AF_VSOCK above all (inside a virtual machine it reaches
// the hypervisor's services, and the network namespace does not cover it),
// AF_PACKET, AF_ALG (hashlib uses OpenSSL, not the kernel's crypto
// sockets), AF_BLUETOOTH, AF_XDP, AF_KEY, AF_TIPC, AF_RDS and the rest of
// the rarely used families that have been the way in of kernel exploits,
// along with the other netlink protocols (audit, uevents, netfilter,
// sock_diag, generic netlink).
var socketFamilies = []uint32{unix.AF_UNIX, unix.AF_INET, unix.AF_INET6}

const socketNetlinkProtocol = unix.NETLINK_ROUTE

// seccompArchs is the audit architecture of each GOARCH the filter knows.
var seccompArchs = map[string]uint32{
	"amd64": unix.AUDIT_ARCH_X86_64,
	"arm64": unix.AUDIT_ARCH_AARCH64,
}

// seccompFilter returns the classic BPF program bwrap loads (--seccomp)
// before starting the kernel (and the fork server's kernels load
// themselves), in the kernel's struct sock_filter layout; nil on an
// architecture it does not know, where the sandbox runs without a filter
// (Describe says so).
func seccompFilter() []byte {
	arch, ok := seccompArchs[runtime.GOARCH]
	if !ok {
		return nil
	}
	prog, err := buildSeccomp(arch, unix.SYS_SOCKET, unix.SYS_SOCKETPAIR)
	if err != nil {
		panic(err) // a fixed program: it assembles or no test passes
	}
	return prog
}

// Offsets in struct seccomp_data: int nr, __u32 arch, __u64
// instruction_pointer, __u64 args[6].
const (
	seccompOffNr   = 0
	seccompOffArch = 4
	seccompOffArgs = 16
	x32SyscallBit  = 0x40000000
)

// seccompArgLow is the offset of the low 32 bits of argument i: a BPF
// load reads one native-endian word, and the family and protocol of
// socket(2) are C ints, of which the kernel uses the low 32 bits only.
func seccompArgLow(i int) uint32 {
	off := uint32(seccompOffArgs + 8*i)
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 { // big-endian
		off += 4
	}
	return off
}

// bpfInsn is one instruction before assembly: jumps name labels, and an
// empty jump target is the next instruction.
type bpfInsn struct {
	label  string
	code   uint16
	k      uint32
	jt, jf string
}

func ld(off uint32) bpfInsn { return bpfInsn{code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: off} }
func jeq(k uint32, jt, jf string) bpfInsn {
	return bpfInsn{code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, k: k, jt: jt, jf: jf}
}
func ret(label string, k uint32) bpfInsn {
	return bpfInsn{label: label, code: unix.BPF_RET | unix.BPF_K, k: k}
}

// buildSeccomp assembles the filter for the audit architecture arch, whose
// socket and socketpair calls have the numbers given:
//
//   - another architecture's calling convention (i386 through int 0x80 on
//     x86_64, whose socketcall(2) would otherwise bypass the socket rule),
//     and on x86_64 the x32 numbers (bit 30): EPERM, as a whole;
//   - deniedSyscalls: EPERM;
//   - socket and socketpair: allowed for socketFamilies and for AF_NETLINK
//     with socketNetlinkProtocol, EAFNOSUPPORT for anything else;
//   - anything else: allowed.
//
// Jumps of classic BPF go forward only, by at most 255 instructions.
func buildSeccomp(arch, sysSocket, sysSocketpair uint32) ([]byte, error) {
	const (
		allow   = "allow"
		eperm   = "eperm"
		refuse  = "eafnosupport"
		socket  = "socket"
		netlink = "netlink"
	)
	prog := []bpfInsn{
		ld(seccompOffArch),
		jeq(arch, "", eperm),
		ld(seccompOffNr),
	}
	if arch == unix.AUDIT_ARCH_X86_64 {
		prog = append(prog, bpfInsn{code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, k: x32SyscallBit, jt: eperm})
	}
	for _, nr := range deniedSyscalls {
		prog = append(prog, jeq(nr, eperm, ""))
	}
	prog = append(prog,
		jeq(sysSocket, socket, ""),
		jeq(sysSocketpair, socket, allow),
	)
	prog = append(prog, ld(seccompArgLow(0)))
	prog[len(prog)-1].label = socket
	for _, f := range socketFamilies {
		prog = append(prog, jeq(f, allow, ""))
	}
	prog = append(prog,
		jeq(unix.AF_NETLINK, netlink, refuse),
		bpfInsn{label: netlink, code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, k: seccompArgLow(2)},
		jeq(socketNetlinkProtocol, allow, refuse),
		ret(allow, unix.SECCOMP_RET_ALLOW),
		ret(refuse, unix.SECCOMP_RET_ERRNO|uint32(unix.EAFNOSUPPORT)),
		ret(eperm, unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM)),
	)
	return assembleBPF(prog)
}

// assembleBPF resolves the labels of prog and encodes it.
func assembleBPF(prog []bpfInsn) ([]byte, error) {
	at := make(map[string]int)
	for i, in := range prog {
		if in.label == "" {
			continue
		}
		if _, dup := at[in.label]; dup {
			return nil, fmt.Errorf("bpf: label %q defined twice", in.label)
		}
		at[in.label] = i
	}
	offset := func(i int, label string) (uint8, error) {
		if label == "" {
			return 0, nil
		}
		to, ok := at[label]
		if !ok {
			return 0, fmt.Errorf("bpf: instruction %d jumps to undefined label %q", i, label)
		}
		d := to - i - 1
		if d < 0 || d > 255 {
			return 0, fmt.Errorf("bpf: instruction %d cannot jump to %q (%d ahead)", i, label, d)
		}
		return uint8(d), nil
	}
	out := make([]byte, 0, 8*len(prog))
	for i, in := range prog {
		jt, err := offset(i, in.jt)
		if err != nil {
			return nil, err
		}
		jf, err := offset(i, in.jf)
		if err != nil {
			return nil, err
		}
		if in.code&0x07 != unix.BPF_JMP && (in.jt != "" || in.jf != "") {
			return nil, fmt.Errorf("bpf: instruction %d is no jump but has targets", i)
		}
		out = binary.NativeEndian.AppendUint16(out, in.code)
		out = append(out, jt, jf)
		out = binary.NativeEndian.AppendUint32(out, in.k)
	}
	return out, nil
}
