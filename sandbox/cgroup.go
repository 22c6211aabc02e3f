package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The limits a kernel's cgroup can hold, named after the cgroup v1
// controllers; under cgroup v2, cpuUsage is cpu.stat, there without any
// controller.
const (
	ctlMemory   = "memory"  // Config.Memory: memory.limit_in_bytes / memory.max
	ctlPids     = "pids"    // Config.Processes: pids.max
	ctlCPUShare = "cpu"     // Config.CPUShare: cpu.cfs_quota_us / cpu.max
	ctlCPUUsage = "cpuacct" // Config.CPUTime, read by the accountant
)

var allControllers = []string{ctlMemory, ctlPids, ctlCPUShare, ctlCPUUsage}

// cgroupDirName is the directory below the gateway's own cgroup (in each
// hierarchy) that holds its kernels' cgroups.
const cgroupDirName = "cellgate"

// cfsPeriod is the CPU share's accounting period: a kernel over its share
// is throttled for the rest of each period, 100 ms at most.
const cfsPeriod = 100 * time.Millisecond

// cgroupHost is what the host offers the gateway's kernels: for each
// controller that enforced in the start-up probe, the directory (below the
// gateway's own cgroup, so the host's limits on the gateway still hold)
// where kernels' cgroups are made. A controller absent from parents is
// held by the accountant (treelimit.go) instead; notes says why.
type cgroupHost struct {
	v2      bool
	parents map[string]string // controller → <mount><own cgroup>/cellgate
	notes   map[string]string // controller → why it is not used
}

// holds tells whether kernels' cgroups hold the limit of controller ctl.
func (h *cgroupHost) holds(ctl string) bool {
	if h == nil {
		return false
	}
	_, ok := h.parents[ctl]
	return ok
}

// mountInfo is one cgroup mount of /proc/self/mountinfo.
type mountInfo struct {
	root, point string
	v2          bool
	options     []string // the super options: v1 controllers among them
}

// parseMountInfo lists the cgroup mounts of a mountinfo file.
func parseMountInfo(data []byte) []mountInfo {
	var mounts []mountInfo
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 || (rf[0] != "cgroup" && rf[0] != "cgroup2") {
			continue
		}
		mounts = append(mounts, mountInfo{
			root: unescapeMount(lf[3]), point: unescapeMount(lf[4]), v2: rf[0] == "cgroup2",
			options: strings.Split(rf[2], ","),
		})
	}
	return mounts
}

// parseProcCgroup reads /proc/self/cgroup: controller → the process's
// cgroup in that v1 hierarchy, and "" → its cgroup v2.
func parseProcCgroup(data []byte) map[string]string {
	own := make(map[string]string)
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.HasPrefix(f[2], "/") {
			continue
		}
		if f[1] == "" {
			own[""] = f[2]
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			own[c] = f[2]
		}
	}
	return own
}

// cgroupDirs finds, for each controller, the directory of the gateway's
// own cgroup: the v1 hierarchy that has it mounted, or else cgroup v2
// where its cgroup.controllers lists it (cpuacct: cpu.stat, always there).
// A host with any of them in v1 is used as v1 alone.
func cgroupDirs(mounts []mountInfo, own map[string]string) (dirs map[string]string, v2 bool, notes map[string]string) {
	dirs, notes = make(map[string]string), make(map[string]string)
	inside := func(m mountInfo, path string) (string, bool) {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.root, "/"))
		if !ok || rel != "" && !strings.HasPrefix(rel, "/") {
			return "", false
		}
		return filepath.Join(m.point, rel), true
	}
	for _, ctl := range allControllers {
		for _, m := range mounts {
			if m.v2 || !slices.Contains(m.options, ctl) {
				continue
			}
			if dir, ok := inside(m, own[ctl]); ok {
				dirs[ctl] = dir
			}
			break
		}
	}
	if len(dirs) > 0 {
		for _, ctl := range allControllers {
			if dirs[ctl] == "" {
				notes[ctl] = "no cgroup v1 " + ctl + " hierarchy"
			}
		}
		return dirs, false, notes
	}
	path, ok := own[""]
	for _, m := range mounts {
		if !m.v2 || !ok {
			continue
		}
		dir, ok := inside(m, path)
		if !ok {
			continue
		}
		ctrl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			continue
		}
		have := strings.Fields(string(ctrl))
		for _, ctl := range allControllers {
			if ctl == ctlCPUUsage || slices.Contains(have, ctl) {
				dirs[ctl] = dir
			} else {
				notes[ctl] = "cgroup v2 offers no " + ctl + " controller here"
			}
		}
		return dirs, true, notes
	}
	for _, ctl := range allControllers {
		notes[ctl] = "no cgroup hierarchy"
	}
	return nil, false, notes
}

// findCgroups makes <own>/cellgate in each hierarchy and keeps the
// controllers that enforce there, as a probe shows (see probeCgroups).
// It never fails: what it cannot use is held by the accountant.
func findCgroups() *cgroupHost {
	h := &cgroupHost{parents: make(map[string]string), notes: make(map[string]string)}
	mounts, err1 := os.ReadFile("/proc/self/mountinfo")
	own, err2 := os.ReadFile("/proc/self/cgroup")
	if err := errors.Join(err1, err2); err != nil {
		for _, ctl := range allControllers {
			h.notes[ctl] = err.Error()
		}
		return h
	}
	dirs, v2, notes := cgroupDirs(parseMountInfo(mounts), parseProcCgroup(own))
	h.v2, h.notes = v2, notes
	// Under v2 a controller reaches a cgroup only through its parent's
	// subtree_control, each one per controller: the gateway's own cgroup
	// may refuse (it holds the gateway, and v2 keeps processes out of
	// cgroups that delegate controllers, except the root): then the
	// accountant holds that limit. CPU usage (cpu.stat) needs none.
	delegated := func(ctl, dir, parent string) error {
		if !v2 || ctl == ctlCPUUsage {
			return nil
		}
		for _, d := range []string{dir, parent} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+"+ctl), 0); err != nil {
				return fmt.Errorf("cgroup v2: cannot delegate %s in %s: %w", ctl, d, err)
			}
		}
		return nil
	}
	for _, ctl := range allControllers {
		dir, ok := dirs[ctl]
		if !ok {
			continue
		}
		parent := filepath.Join(dir, cgroupDirName)
		err := os.Mkdir(parent, 0o755)
		if errors.Is(err, os.ErrExist) {
			err = nil
		}
		if err == nil {
			err = delegated(ctl, dir, parent)
		}
		if err != nil {
			h.notes[ctl] = err.Error()
			continue
		}
		h.parents[ctl] = parent
	}
	h.probe()
	return h
}

// probe runs a small shell in a throw-away cgroup per controller and
// drops the controllers that do not hold: a 16 MiB memory limit must kill
// a shell that holds 64 MiB (and count the kill, as the accountant reads
// it), pids.max 1 must make its fork fail, a 5% CPU quota must throttle a
// busy loop, and CPU usage must count it. All run at once: about half a
// second.
func (h *cgroupHost) probe() {
	if len(h.parents) == 0 {
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := func(ctl string, err error) {
		mu.Lock()
		defer mu.Unlock()
		delete(h.parents, ctl)
		h.notes[ctl] = "did not hold in a probe: " + err.Error()
	}
	// Gateways in one process (tests) probe at the same time.
	name := "probe-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if h.holds(ctlMemory) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.probeMemory(name + "-memory"); err != nil {
				failed(ctlMemory, err)
			}
		}()
	}
	if h.holds(ctlPids) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.probePids(name + "-pids"); err != nil {
				failed(ctlPids, err)
			}
		}()
	}
	if h.holds(ctlCPUShare) || h.holds(ctlCPUUsage) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			share, usage := h.probeCPU(name + "-cpu")
			if share != nil {
				failed(ctlCPUShare, share)
			}
			if usage != nil {
				failed(ctlCPUUsage, usage)
			}
		}()
	}
	wg.Wait()
}

// probeCgroup makes a cgroup of the given controllers only.
func (h *cgroupHost) probeCgroup(name string, ctls ...string) (*kernelCgroup, error) {
	sub := &cgroupHost{v2: h.v2, parents: make(map[string]string)}
	for _, c := range ctls {
		if p, ok := h.parents[c]; ok {
			sub.parents[c] = p
		}
	}
	return sub.create(name)
}

// runIn runs script with sh in cg, placed there before it runs, and
// stops it after d at most. It returns the shell's exit error.
func runIn(cg *kernelCgroup, script string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", "read go; "+script)
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := cg.place(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("place: %w", err)
	}
	_, _ = in.Write([]byte("go\n"))
	in.Close()
	return cmd.Wait()
}

func (h *cgroupHost) probeMemory(name string) error {
	cg, err := h.probeCgroup(name, ctlMemory)
	if err != nil {
		return err
	}
	defer cg.remove()
	if err := cg.write(ctlMemory, cg.files().memoryLimit, strconv.Itoa(16<<20)); err != nil {
		return err
	}
	err = runIn(cg, `x=$(head -c 67108864 /dev/zero | tr '\0' a); exit 0`, 30*time.Second)
	if err == nil {
		return errors.New("a shell held 64 MiB under a 16 MiB limit")
	}
	if kills, err := cg.oomKills(); err != nil || kills == 0 {
		return fmt.Errorf("no OOM kill counted (%v)", err)
	}
	return nil
}

func (h *cgroupHost) probePids(name string) error {
	cg, err := h.probeCgroup(name, ctlPids)
	if err != nil {
		return err
	}
	defer cg.remove()
	if err := cg.write(ctlPids, "pids.max", "1"); err != nil {
		return err
	}
	if err := runIn(cg, `/bin/true && /bin/true && exit 0; exit 3`, 30*time.Second); err == nil {
		return errors.New("a shell forked under pids.max 1")
	}
	return nil
}

// probeCPU burns CPU for 400 ms under a 5% quota: the quota holds if the
// loop was throttled and got well under half of that time, usage is
// counted if it saw any.
func (h *cgroupHost) probeCPU(name string) (share, usage error) {
	cg, err := h.probeCgroup(name, ctlCPUShare, ctlCPUUsage)
	if err != nil {
		return err, err
	}
	defer cg.remove()
	const burn = 400 * time.Millisecond
	if cg.has(ctlCPUShare) {
		if err := cg.setShare(0.05); err != nil {
			share = err
		}
	}
	_ = runIn(cg, `while :; do :; done`, burn)
	used, uerr := cg.cpuUsage()
	if cg.has(ctlCPUUsage) && (uerr != nil || used <= 0) {
		usage = fmt.Errorf("a busy loop used no CPU (%v)", uerr)
	}
	if cg.has(ctlCPUShare) && share == nil {
		throttled, err := cg.statField(ctlCPUShare, "cpu.stat", "nr_throttled")
		switch {
		case err != nil:
			share = err
		case throttled == 0:
			share = errors.New("a busy loop was not throttled under a 5% quota")
		case uerr == nil && used > burn/2:
			share = fmt.Errorf("a busy loop used %v in %v under a 5%% quota", used, burn)
		}
	}
	return share, usage
}

// kernelCgroup is one kernel's cgroup in each hierarchy that holds one of
// its limits.
type kernelCgroup struct {
	v2   bool
	dirs map[string]string // controller → the kernel's cgroup directory

	// memoryEnded is set once the accountant has ended the kernel for an
	// OOM kill in its cgroup: the launcher need not name it again.
	memoryEnded atomic.Bool
	// oomAtEnd is the OOM kill count read just before the cgroup was
	// removed (after the kernel's processes had ended).
	oomAtEnd atomic.Int64
	// memory is the limit written into it, in bytes.
	memory int64
}

// memoryError tells the kernel's client why it ended: n of its processes
// were killed at its memory limit.
func (k *kernelCgroup) memoryError(n int64) error {
	return fmt.Errorf("%w: its processes held %d MiB together, the limit: the OOM killer of its cgroup ended %d of them", ErrMemoryLimit, k.memory>>20, n)
}

// killedAtMemory tells whether the OOM killer ended a process of the
// kernel, whose end the accountant did not name: the kernel's main
// process itself, killed before the accountant's next look.
func (k *kernelCgroup) killedAtMemory() bool {
	return k != nil && k.oomAtEnd.Load() > 0 && !k.memoryEnded.Load()
}

// cgroupFiles are the names of the files that differ between v1 and v2.
type cgroupFiles struct {
	memoryLimit, memoryEvents, memoryPeak string
}

func (k *kernelCgroup) files() cgroupFiles {
	if k.v2 {
		return cgroupFiles{memoryLimit: "memory.max", memoryEvents: "memory.events", memoryPeak: "memory.peak"}
	}
	return cgroupFiles{memoryLimit: "memory.limit_in_bytes", memoryEvents: "memory.oom_control", memoryPeak: "memory.max_usage_in_bytes"}
}

func (k *kernelCgroup) has(ctl string) bool {
	if k == nil {
		return false
	}
	_, ok := k.dirs[ctl]
	return ok
}

// create makes the cgroup name in every hierarchy h uses (one directory
// where controllers share one); nothing is in it yet.
func (h *cgroupHost) create(name string) (*kernelCgroup, error) {
	if h == nil || len(h.parents) == 0 {
		return nil, nil
	}
	k := &kernelCgroup{v2: h.v2, dirs: make(map[string]string)}
	for ctl, parent := range h.parents {
		k.dirs[ctl] = filepath.Join(parent, name)
	}
	for _, dir := range k.unique() {
		if err := os.Mkdir(dir, 0o755); err != nil {
			k.remove()
			return nil, fmt.Errorf("kernel cgroup: %w", err)
		}
	}
	return k, nil
}

// unique lists the kernel's cgroup directories, each once.
func (k *kernelCgroup) unique() []string {
	var out []string
	for _, ctl := range allControllers {
		if dir, ok := k.dirs[ctl]; ok && !slices.Contains(out, dir) {
			out = append(out, dir)
		}
	}
	return out
}

func (k *kernelCgroup) write(ctl, file, value string) error {
	if err := os.WriteFile(filepath.Join(k.dirs[ctl], file), []byte(value), 0); err != nil {
		return fmt.Errorf("kernel cgroup: %w", err)
	}
	return nil
}

// setLimits writes c's limits into the cgroup. pids.max counts the whole
// sandbox, bwrap's processes and a forked kernel's helpers included.
func (k *kernelCgroup) setLimits(c *Config) error {
	var errs []error
	if k.has(ctlMemory) {
		k.memory = c.Memory
		errs = append(errs, k.write(ctlMemory, k.files().memoryLimit, strconv.FormatInt(c.Memory, 10)))
		if !k.v2 {
			// With swap, memory+swap too (the file exists only then).
			_ = k.write(ctlMemory, "memory.memsw.limit_in_bytes", strconv.FormatInt(c.Memory, 10))
		} else {
			_ = k.write(ctlMemory, "memory.swap.max", "0")
		}
	}
	if k.has(ctlPids) {
		errs = append(errs, k.write(ctlPids, "pids.max", strconv.Itoa(c.Processes)))
	}
	if k.has(ctlCPUShare) && c.CPUShare > 0 {
		errs = append(errs, k.setShare(c.CPUShare))
	}
	return errors.Join(errs...)
}

// setShare lets the cgroup use share cores per period on average.
func (k *kernelCgroup) setShare(share float64) error {
	period := cfsPeriod.Microseconds()
	quota := max(1000, int64(share*float64(period)))
	if k.v2 {
		return k.write(ctlCPUShare, "cpu.max", fmt.Sprintf("%d %d", quota, period))
	}
	return errors.Join(
		k.write(ctlCPUShare, "cpu.cfs_period_us", strconv.FormatInt(period, 10)),
		k.write(ctlCPUShare, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10)),
	)
}

// place moves process pid (all its threads) into the cgroup.
func (k *kernelCgroup) place(pid int) error {
	file := "cgroup.procs"
	for _, dir := range k.unique() {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("kernel cgroup: place %d: %w", pid, err)
		}
	}
	return nil
}

// placeTree moves root and everything below it into the cgroup. A process
// forks its children into its own cgroup: walks repeat until one finds
// nothing it has not moved, so that a child forked meanwhile by a process
// not yet moved is not left behind.
func (k *kernelCgroup) placeTree(root int) error {
	moved := make(map[int]bool)
	for round := 0; round < 100; round++ {
		fresh := 0
		for _, pid := range processTree(root) {
			if moved[pid] {
				continue
			}
			if err := k.place(pid); err != nil {
				if _, serr := readStat(pid); processGone(serr) {
					continue // ended meanwhile
				}
				return err
			}
			moved[pid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
	return errors.New("kernel cgroup: its process tree kept growing while being placed")
}

// procs lists the pids in the cgroup.
func (k *kernelCgroup) procs() []int {
	var pids []int
	for _, dir := range k.unique() {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// statField reads "name value" from a flat-keyed cgroup file.
func (k *kernelCgroup) statField(ctl, file, name string) (int64, error) {
	dir, ok := k.dirs[ctl]
	if !ok {
		return 0, fmt.Errorf("no %s cgroup", ctl)
	}
	var buf [4096]byte
	data, err := readProc(filepath.Join(dir, file), buf[:])
	if err != nil {
		return 0, err
	}
	return parseFlatKeyed(data, name)
}

// parseFlatKeyed finds "name value" in a cgroup's flat-keyed file
// (memory.oom_control, memory.events, cpu.stat, pids.events).
func parseFlatKeyed(data []byte, name string) (int64, error) {
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == name {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("cgroup: %s %q", name, f[1])
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("cgroup: no %s", name)
}

// oomKills is how many of the kernel's processes the OOM killer ended for
// its memory limit.
func (k *kernelCgroup) oomKills() (int64, error) {
	return k.statField(ctlMemory, k.files().memoryEvents, "oom_kill")
}

// cpuUsage is the CPU time of every process the cgroup has held, ended
// ones included, however they were reaped.
func (k *kernelCgroup) cpuUsage() (time.Duration, error) {
	if k.v2 {
		us, err := k.statField(ctlCPUUsage, "cpu.stat", "usage_usec")
		return time.Duration(us) * time.Microsecond, err
	}
	dir, ok := k.dirs[ctlCPUUsage]
	if !ok {
		return 0, errors.New("no cpuacct cgroup")
	}
	var buf [64]byte
	data, err := readProc(filepath.Join(dir, "cpuacct.usage"), buf[:])
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil || ns < 0 {
		return 0, fmt.Errorf("cpuacct.usage %q", data)
	}
	return time.Duration(ns), nil
}

// remove kills whatever is still in the cgroup, waits until it is empty
// (a killed process leaves it once it is reaped) and removes it. The
// kernel's processes are normally gone already: this is the last sweep.
func (k *kernelCgroup) remove() error {
	if k == nil {
		return nil
	}
	if k.has(ctlMemory) {
		if n, err := k.oomKills(); err == nil {
			k.oomAtEnd.Store(n)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	var errs []error
	for _, dir := range k.unique() {
		for {
			err := syscall.Rmdir(dir)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove kernel cgroup %s: %w", dir, err))
				break
			}
			for _, pid := range k.procs() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// endLeftovers ends whatever a kernel that has ended left running, and
// reports whether anything of it may still run. With a cgroup, removing
// it (which kills what is in it) is enough: every process of the kernel
// is in it from before any of the kernel's code ran, and can no more
// leave it than write to a file of root's; no walk of the host's
// processes is needed, which sweepUID costs more the more kernels run.
// Without one, or if it cannot be removed, the kernel's uid is swept, and
// the cgroup's removal tried once more.
func endLeftovers(ctx context.Context, cg *kernelCgroup, killPath string, uid int) error {
	if cg != nil && len(cg.unique()) > 0 {
		if err := cg.remove(); err == nil {
			return nil
		}
	}
	return errors.Join(sweepUID(ctx, killPath, uid), cg.remove())
}

// staleAge is how old a leftover cgroup must be before the start-up sweep
// removes it: one just made may be another gateway's, whose kernel is
// about to enter it (gateways whose state directories differ can share a
// cgroup hierarchy, and then cannot see each other's uid locks).
const staleAge = time.Minute

// sweepCgroups removes what a crashed gateway left below cellgate: probe
// cgroups of processes that are gone, and kernels' cgroups whose uid
// (the name's prefix) nobody holds, once they are staleAge old. It only
// removes empty ones (rmdir refuses the others) and kills nothing: a
// crashed gateway's kernels die with it (bwrap --die-with-parent, the
// templates' parent-death signal), and the uid sweep ends the rest.
func (b *Bwrap) sweepCgroups() {
	if b.cgroups == nil {
		return
	}
	seen := make(map[string]bool)
	for _, parent := range b.cgroups.parents {
		if seen[parent] {
			continue
		}
		seen[parent] = true
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !b.staleCgroup(e.Name()) {
				continue
			}
			if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < staleAge {
				continue
			}
			_ = syscall.Rmdir(filepath.Join(parent, e.Name()))
		}
	}
}

// staleCgroup tells whether the cgroup name below cellgate is a leftover.
func (b *Bwrap) staleCgroup(name string) bool {
	if rest, ok := strings.CutPrefix(name, "probe-"); ok {
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil {
			return false
		}
		_, serr := readStat(pid)
		return processGone(serr)
	}
	uid, err := strconv.Atoi(strings.SplitN(name, "-", 2)[0])
	if err != nil || uid < b.cfg.UIDBase || uid >= b.cfg.UIDBase+b.cfg.UIDCount {
		return false
	}
	f, err := b.uids.tryLock(uid)
	if err != nil || f == nil {
		return false // held: a live kernel's, of this gateway or another
	}
	f.Close()
	return true
}

// kernelCgroupName names a kernel's cgroup: its uid first (so that the
// start-up sweep can tell whose it is), then its work directory's name,
// then a number of the launch (a restart gets a new cgroup).
func kernelCgroupName(uid int, workDir string, n uint64) string {
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, filepath.Base(workDir))
	if len(base) > 64 {
		base = base[:64]
	}
	return fmt.Sprintf("%d-%s-%d", uid, base, n)
}

// describe says which mechanism holds each per-kernel limit.
func (h *cgroupHost) describe(c *Config) string {
	version := "v1"
	if h != nil && h.v2 {
		version = "v2"
	}
	via := func(ctl, cgroupFile, fallback string) string {
		if h.holds(ctl) {
			return "cgroup " + version + " " + cgroupFile
		}
		why := ""
		if h != nil {
			why = h.notes[ctl]
		}
		if why == "" {
			why = "no cgroups"
		}
		return fallback + " (" + why + ")"
	}
	memFile, cpuFile := "memory.limit_in_bytes", "cpu.cfs_quota_us"
	if h != nil && h.v2 {
		memFile, cpuFile = "memory.max", "cpu.max"
	}
	share := "no CPU share"
	if c.CPUShare > 0 {
		share = fmt.Sprintf("CPU share %g cores by %s", c.CPUShare, via(ctlCPUShare, cpuFile, "the accountant's SIGSTOP"))
	}
	return fmt.Sprintf("memory %s by %s; cpu %v by %s, checked every %v; %d processes by %s; %s",
		mib(c.Memory), via(ctlMemory, memFile+" (OOM kill ends the kernel)", "the accountant's PSS sum"),
		c.CPUTime, via(ctlCPUUsage, "CPU usage", "the accountant's /proc sum"), c.LimitEvery,
		c.Processes, via(ctlPids, "pids.max and RLIMIT_NPROC", "RLIMIT_NPROC"), share)
}
