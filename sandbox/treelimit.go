package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrMemoryLimit: the kernel's processes together held more than
// Config.Memory (see "Limits" in the package comment).
var ErrMemoryLimit = errors.New("kernel exceeded its memory limit")

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat: 100 on
// every architecture Linux builds Go for.
const clockTicks = 100

// maxTreeProcesses bounds one walk of a kernel's tree, far above
// Config.Processes: a walk never grows without bound.
const maxTreeProcesses = 4096

// procStat is what the accountant reads of one process in /proc/PID/stat.
type procStat struct {
	pid, ppid int
	state     byte
	// own is the CPU time of the process (every thread, living or ended),
	// reaped that of its children it has waited for (cutime+cstime), in
	// clock ticks.
	own, reaped int64
	// start is the process's start time (ticks since boot): with pid, it
	// names the process even if its pid is reused later.
	start uint64
	// rss is its resident set, in bytes.
	rss int64
}

// parseStat decodes /proc/PID/stat. The command name between the
// parentheses is the process's to choose (prctl, exec of any name), so
// everything is read after the last ')'.
func parseStat(data []byte) (procStat, error) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 1 || end < open {
		return procStat{}, errors.New("stat: no command name")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil || pid <= 0 {
		return procStat{}, fmt.Errorf("stat: pid %q", data[:open])
	}
	f := strings.Fields(string(data[end+1:]))
	// f[0] is field 3 of proc(5): state; rss is field 24.
	if len(f) < 22 || len(f[0]) != 1 {
		return procStat{}, errors.New("stat: too few fields")
	}
	var n [22]int64
	for _, i := range []int{1, 11, 12, 13, 14, 19, 21} {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil || v < 0 {
			return procStat{}, fmt.Errorf("stat: field %d %q", i+3, f[i])
		}
		n[i] = v
	}
	return procStat{
		pid: pid, ppid: int(n[1]), state: f[0][0],
		own: n[11] + n[12], reaped: n[13] + n[14],
		start: uint64(n[19]), rss: n[21] * int64(os.Getpagesize()),
	}, nil
}

func readStat(pid int) (procStat, error) {
	var buf [1024]byte
	data, err := readProc("/proc/"+strconv.Itoa(pid)+"/stat", buf[:])
	if err != nil {
		return procStat{}, err
	}
	return parseStat(data)
}

// readProc reads a small /proc file into buf (what does not fit is left
// out) with plain system calls: os.Open would also try to register the
// file with the runtime's poller, a third of a sample's cost.
func readProc(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

// readNames lists a /proc directory, as readProc reads a file.
func readNames(path string) []string {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	var names []string
	var buf [4096]byte
	for {
		n, err := unix.Getdents(fd, buf[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return names
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// processTree lists pid and its descendants, parents first. Each thread
// has its own list of the children it forked. An orphan is adopted by its
// pid namespace's pid 1 (the sandbox's, below the root) or by a
// subreaper inside the tree, so whatever group or session a process of
// the kernel moves to, it stays below the root.
func processTree(pid int) []int {
	tree := []int{pid}
	var buf [4096]byte
	for i := 0; i < len(tree) && len(tree) < maxTreeProcesses; i++ {
		dir := "/proc/" + strconv.Itoa(tree[i]) + "/task/"
		for _, task := range readNames(dir) {
			data, err := readProc(dir+task+"/children", buf[:])
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(f); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree
}

// parsePss reads the Pss line of /proc/PID/smaps_rollup, in bytes.
func parsePss(data []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Pss:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kib, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kib < 0 || kib > 1<<40 {
			break
		}
		return kib << 10, nil
	}
	return 0, errors.New("smaps_rollup: no Pss")
}

func readPss(pid int) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	return parsePss(data)
}

// pssOf sums the proportional set sizes of pids: what they cost the
// machine, each page shared by n processes counted 1/n in each.
// Processes that ended meanwhile count nothing; only the first must be
// there.
func pssOf(pids []int) (int64, error) {
	var total int64
	for i, p := range pids {
		pss, err := readPss(p)
		if err != nil {
			if i == 0 {
				return 0, fmt.Errorf("kernel memory: %w", err)
			}
			continue
		}
		total += pss
	}
	return total, nil
}

// TreeMemory is the proportional set size of pid and its descendants
// (Process.Pid: the kernel's whole sandbox), as the accountant counts it
// against Config.Memory.
func TreeMemory(pid int) (int64, error) {
	return pssOf(processTree(pid))
}

// treeLimits are what the accountant holds a kernel's tree to.
type treeLimits struct {
	memory int64         // bytes of PSS
	cpu    time.Duration // CPU time of the tree, ended processes included
	share  float64       // cores on average; 0: no share
	every  time.Duration // sampling period
	// cg is the kernel's cgroup, nil without one: the limits it holds
	// (cgroup.go) are read from it, not summed from /proc.
	cg *kernelCgroup
}

func (c *Config) treeLimits() treeLimits {
	return treeLimits{memory: c.Memory, cpu: c.CPUTime, share: c.CPUShare, every: c.LimitEvery}
}

// A kernel may run ahead of its share by shareAhead's worth (it starts
// with that much) and fall behind by shareBehind's worth at most, which
// bounds how long it is stopped at a time: about shareBehind, well inside
// the pool's heartbeat tolerance. While it is behind, its tree is sampled
// shareLook times as often, so that it runs in short slices and the debt
// one slice makes stays under that bound (up to shareLook*shareBehind/
// LimitEvery cores, ten cores per core of share with the defaults; a tree
// on more cores than that gets more than its share, unless LimitEvery is
// shorter).
const (
	shareAhead  = time.Second
	shareBehind = 500 * time.Millisecond
	shareLook   = 5
)

// treeAccount counts the CPU time of one kernel's processes, those that
// ended included.
type treeAccount struct {
	root      int
	rootStart uint64
	// adopter is a forked kernel's pid 1 (0 for a cold kernel): not
	// below root, it adopts the kernel's orphans.
	adopter int
	seen    map[int]procStat // the last sample, by pid
	// ticks is the CPU time of every process the tree has had, so far.
	ticks int64
	// lastPSS saves reading the tree's PSS at every sample while its
	// resident sets are over the memory limit and its PSS is not.
	lastPSS pssReading
}

// processGone tells whether err, from reading a process's /proc files,
// means the process has ended.
func processGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// errTreeEnded: the root of a kernel's tree has ended (its pid may
// already be someone else's).
var errTreeEnded = errors.New("kernel's process tree ended")

// sample reads the tree once and adds what it used since the last sample
// to ticks. It returns the processes read, root first; errTreeEnded once
// the root has ended, another error if /proc could not be read this time.
func (a *treeAccount) sample() ([]procStat, error) {
	root, err := readStat(a.root)
	if processGone(err) || err == nil && root.start != a.rootStart {
		return nil, errTreeEnded
	}
	if err != nil {
		return nil, err
	}
	procs := []procStat{root}
	for _, pid := range a.members() {
		if s, err := readStat(pid); err == nil {
			procs = append(procs, s)
		}
	}
	if a.adopter > 0 {
		if s, err := readStat(a.adopter); err == nil {
			procs = append(procs, s)
		}
	}
	a.add(procs)
	return procs, nil
}

// members are the processes of the tree that run the kernel's code: below
// the root (for a cold kernel, the outer bwrap, which uses no CPU), or,
// for a forked kernel, the root (the kernel itself) and what is below it
// and below its pid 1 (the orphans it adopted).
func (a *treeAccount) members() []int {
	if a.adopter == 0 {
		return processTree(a.root)[1:]
	}
	return append(processTree(a.root), processTree(a.adopter)[1:]...)
}

// add updates ticks from a new sample. A process's own time grows while
// it lives; once its parent has waited for it, its whole time (including
// the part since the last sample, and children it reaped) appears in the
// parent's reaped time, of which the part already counted while it lived
// is taken off. A process that lived and ended between two samples is
// counted through its parent alone. What escapes: a process whose parent
// ignores SIGCHLD (or set SA_NOCLDWAIT) is reaped by the kernel without
// adding to any reaped time, so its CPU since the last sample it was seen
// in is lost (all of it if it lived less than a period).
func (a *treeAccount) add(procs []procStat) {
	cur := make(map[int]procStat, len(procs))
	for _, s := range procs {
		cur[s.pid] = s
	}
	same := func(pid int) bool {
		s, ok := cur[pid]
		old, seen := a.seen[pid]
		return ok && seen && s.start == old.start
	}
	absorbed := make(map[int]int64)
	for pid, old := range a.seen {
		if same(pid) {
			continue
		}
		// Ended: its parent reaped it; or, if the parent ended too, pid 1
		// of its namespace adopted it (the root's child), as it adopts
		// every orphan but a subreaper's.
		reaper := old.ppid
		if !same(reaper) {
			reaper = a.namespaceInit(old)
		}
		if !same(reaper) {
			reaper = a.root
		}
		absorbed[reaper] += old.own + old.reaped
	}
	for pid, s := range cur {
		var old procStat
		if same(pid) {
			old = a.seen[pid]
		}
		a.ticks += max(0, s.own-old.own)
		a.ticks += max(0, s.reaped-old.reaped-absorbed[pid])
	}
	a.seen = cur
}

// namespaceInit is the process that adopted s's orphans, as last
// sampled: the sandbox's pid 1 (a cold kernel's inner bwrap, the ancestor
// of s that the root started; a forked kernel's adopter). The root itself
// if there is none.
func (a *treeAccount) namespaceInit(s procStat) int {
	if a.adopter > 0 {
		return a.adopter
	}
	for hops := 0; hops < maxTreeProcesses; hops++ {
		parent, ok := a.seen[s.ppid]
		if !ok {
			break
		}
		if parent.ppid == a.root {
			return parent.pid
		}
		s = parent
	}
	return a.root
}

// cpu is the tree's CPU time so far.
func (a *treeAccount) cpu() time.Duration {
	return time.Duration(a.ticks) * time.Second / clockTicks
}

// overLimit tells whether the tree, as just sampled, is over a limit,
// and which. Memory is summed cheaply first (resident sets, which count
// a page shared by n processes n times): only a tree whose resident sets
// add up to more than the limit has its proportional set sizes read,
// which cost a walk of its page tables; that sum decides.
func (l treeLimits) overLimit(a *treeAccount, procs []procStat, now time.Time) error {
	if err := l.overCgroupLimit(); err != nil {
		return err
	}
	if l.cpu > 0 && !l.cg.has(ctlCPUUsage) && a.cpu() > l.cpu {
		return fmt.Errorf("%w: its processes used %.1fs of CPU together (limit %v)", ErrCPULimit, a.cpu().Seconds(), l.cpu)
	}
	if l.memory <= 0 || l.cg.has(ctlMemory) {
		return nil
	}
	var rss int64
	for _, s := range procs {
		rss += s.rss
	}
	if rss <= l.memory || !a.lastPSS.due(rss, l.memory, now) {
		return nil
	}
	pids := make([]int, len(procs))
	for i, s := range procs {
		pids[i] = s.pid
	}
	pss, err := pssOf(pids)
	if err != nil {
		return nil
	}
	a.lastPSS = pssReading{rss: rss, pss: pss, at: now}
	if pss <= l.memory {
		return nil
	}
	return fmt.Errorf("%w: its %d processes held %d MiB together (limit %d MiB)", ErrMemoryLimit, len(procs), pss>>20, l.memory>>20)
}

// overCgroupLimit tells whether the kernel's cgroup shows it over a limit
// the cgroup holds: its CPU usage (every process it held, however reaped)
// over CPUTime, or a process of it killed by the OOM killer at Memory
// (the cgroup kills at once, the kernel then is ended as a whole, as the
// accountant ends one over Memory).
func (l treeLimits) overCgroupLimit() error {
	if l.cpu > 0 && l.cg.has(ctlCPUUsage) {
		if used, err := l.cg.cpuUsage(); err == nil && used > l.cpu {
			return fmt.Errorf("%w: its processes used %.1fs of CPU together (limit %v, counted by its cgroup)", ErrCPULimit, used.Seconds(), l.cpu)
		}
	}
	if l.cg.has(ctlMemory) {
		if n, err := l.cg.oomKills(); err == nil && n > 0 {
			l.cg.memoryEnded.Store(true)
			return l.cg.memoryError(n)
		}
	}
	return nil
}

// pssReading is the last time a tree's proportional set sizes were read,
// and its resident sets then.
type pssReading struct {
	rss, pss int64
	at       time.Time
}

// pssAgain is how long a tree whose resident sets are over the limit, but
// whose PSS was under it, may go without another PSS reading while its
// resident sets do not grow by the room that was left.
const pssAgain = 2 * time.Second

// due tells whether the tree's PSS must be read again. Its PSS grows by
// no more than its resident sets do when its own processes map pages or
// end (a page shared by k of the tree's processes among n counts k/n, and
// k-1/n-1 is less), so while the resident sets have grown by less than the
// room left under the limit, the PSS is still under it. It can also grow
// when processes outside the tree that share its pages end (other kernels
// of the same template): that is slow and small, and a reading every
// pssAgain catches it.
func (r pssReading) due(rss, limit int64, now time.Time) bool {
	return r.at.IsZero() || now.Sub(r.at) >= pssAgain || rss-r.rss > limit-r.pss
}

// limitTree holds p's process tree to l until p is done: it samples the
// tree every l.every, ends the kernel (Process.Err says which limit) once
// it is over Memory or CPUTime, and keeps it to its CPU share by stopping
// its processes (SIGSTOP) while it is behind and resuming them (SIGCONT)
// once the share has caught up. The limits the kernel's cgroup holds are
// read from it instead (overCgroupLimit); where it holds them all, /proc
// is not read at all (limitByCgroup).
func limitTree(p *Process, l treeLimits) {
	if !l.needsProc() {
		limitByCgroup(p, l)
		return
	}
	root, err := readStat(p.Pid())
	for err != nil {
		if processGone(err) {
			return // ended already: Done follows
		}
		select {
		case <-p.done:
			return
		case <-time.After(l.every):
		}
		root, err = readStat(p.Pid())
	}
	a := &treeAccount{root: p.Pid(), rootStart: root.start, adopter: p.adopter}
	next := time.NewTimer(l.every)
	defer next.Stop()
	ahead, behind := l.share*shareAhead.Seconds(), l.share*shareBehind.Seconds()
	budget, last, lastTicks := ahead, time.Now(), int64(0)
	var stopped map[int]uint64 // what we stopped: pid → start
	for {
		select {
		case <-p.done:
			return
		case <-next.C:
		}
		procs, err := a.sample()
		if errors.Is(err, errTreeEnded) {
			return
		}
		if err != nil {
			// /proc failed us this once (the gateway out of descriptors):
			// the limits hold again at the next sample.
			next.Reset(l.every)
			continue
		}
		if err := l.overLimit(a, procs, time.Now()); err != nil {
			p.endFor(err)
			return
		}
		wait := l.every
		if l.share > 0 && !l.cg.has(ctlCPUShare) {
			now := time.Now()
			used := float64(a.ticks-lastTicks) / clockTicks
			budget = min(ahead, max(-behind, budget+l.share*now.Sub(last).Seconds()-used))
			last, lastTicks = now, a.ticks
			if budget < 0 {
				stopped = stopTree(p, a, stopped)
			} else if stopped != nil {
				resumeTree(p, stopped)
				stopped = nil
			}
			if budget < ahead/2 {
				wait = max(10*time.Millisecond, l.every/shareLook)
			}
		}
		next.Reset(wait)
	}
}

// needsProc tells whether a limit is left to the /proc accountant.
func (l treeLimits) needsProc() bool {
	return l.cpu > 0 && !l.cg.has(ctlCPUUsage) || l.memory > 0 && !l.cg.has(ctlMemory) ||
		l.share > 0 && !l.cg.has(ctlCPUShare)
}

// limitByCgroup is limitTree where the kernel's cgroup holds every limit:
// it reads the cgroup's CPU usage and OOM kills every l.every, no /proc.
func limitByCgroup(p *Process, l treeLimits) {
	next := time.NewTicker(l.every)
	defer next.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-next.C:
		}
		if err := l.overCgroupLimit(); err != nil {
			p.endFor(err)
			return
		}
	}
}

// stopTree sends SIGSTOP to every process of the tree that runs the
// kernel's code (treeAccount.members), until a walk finds none running (a
// process may fork while the others are being stopped), and adds them to
// stopped.
func stopTree(p *Process, a *treeAccount, stopped map[int]uint64) map[int]uint64 {
	if stopped == nil {
		stopped = make(map[int]uint64)
	}
	for round := 0; round < 8; round++ {
		running := 0
		for _, pid := range a.members() {
			s, err := readStat(pid)
			if err != nil || s.state == 'T' || s.state == 't' || s.state == 'Z' || s.state == 'X' {
				continue
			}
			if isDone(p) {
				return stopped
			}
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				stopped[pid] = s.start
				running++
			}
		}
		if running == 0 {
			break
		}
		time.Sleep(time.Millisecond) // SIGSTOP takes effect asynchronously
	}
	return stopped
}

// resumeTree sends SIGCONT to the processes stopTree stopped that are
// still the same processes; those the kernel stopped itself stay so.
func resumeTree(p *Process, stopped map[int]uint64) {
	for pid, start := range stopped {
		if isDone(p) {
			return
		}
		if s, err := readStat(pid); err == nil && s.start == start {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}
