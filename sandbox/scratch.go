package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The directories of a kernel's tmpfs.
const (
	subRun  = "run"  // bound over RuntimeDir, on the host and in the sandbox
	subWork = "work" // bound over WorkDir, on the host and in the sandbox
	subTmp  = "tmp"  // the sandbox's /tmp
	subHome = "home" // the sandbox's HOME
	subShm  = "shm"  // the sandbox's /dev/shm
)

// scratch is one kernel's storage: a tmpfs mounted at dir (under
// StateDir), whose run and work directories are also bound over the pool's
// RuntimeDir and WorkDir on the host, so the gateway finds the sockets and
// files where it put the connection file, while the kernel writes only to
// memory it is allowed (Disk, Inodes).
//
// The host-side binds carry nosymfollow: the gateway, as root, opens
// sockets and files in directories the kernel controls, and must not be
// led elsewhere by a symlink the kernel planted (ELOOP instead). They are
// also nosuid, nodev and noexec. The sandbox's own binds come from the
// tmpfs mount, where symlinks work as usual.
type scratch struct {
	dir        string
	uid        int
	runtimeDir string
	mounted    []string // in mount order
}

// newScratch mounts a tmpfs for uid and binds it over req's directories,
// carrying over what the pool already put there (the connection file).
func newScratch(cfg *Config, tag string, uid int, req Request) (s *scratch, err error) {
	s = &scratch{
		dir:        filepath.Join(cfg.StateDir, "k"+strconv.Itoa(uid)),
		uid:        uid,
		runtimeDir: req.RuntimeDir,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.release())
		}
	}()
	if err := os.Mkdir(s.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return s, fmt.Errorf("kernel scratch dir: %w", err)
	}
	opts := fmt.Sprintf("size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d", cfg.Disk, cfg.Inodes, uid, uid)
	if err := unix.Mount(tag, s.dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return s, fmt.Errorf("mount kernel tmpfs on %s: %w", s.dir, err)
	}
	s.mounted = append(s.mounted, s.dir)
	for _, d := range []struct {
		name string
		mode os.FileMode
	}{{subRun, 0o700}, {subWork, 0o700}, {subHome, 0o700}, {subTmp, 0o777 | os.ModeSticky}, {subShm, 0o777 | os.ModeSticky}} {
		p := filepath.Join(s.dir, d.name)
		if err := os.Mkdir(p, 0o700); err != nil {
			return s, fmt.Errorf("kernel scratch: %w", err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return s, fmt.Errorf("kernel scratch: %w", err)
		}
		if d.mode&os.ModeSticky != 0 {
			// /tmp and /dev/shm stay root's: in a sticky directory its
			// owner may rename anything, and guardMountPoint's directories
			// must stay where they are.
			continue
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			return s, fmt.Errorf("kernel scratch: %w", err)
		}
	}
	for _, d := range cfg.HomeDirs {
		p := filepath.Join(s.dir, subHome, d)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return s, fmt.Errorf("kernel home: %w", err)
		}
		for ; p != filepath.Join(s.dir, subHome); p = filepath.Dir(p) {
			if err := os.Lchown(p, uid, uid); err != nil {
				return s, fmt.Errorf("kernel home: %w", err)
			}
		}
	}
	for _, dir := range []string{req.RuntimeDir, req.WorkDir} {
		if err := s.guardMountPoint(cfg, dir); err != nil {
			return s, err
		}
	}
	for _, b := range []struct{ sub, host string }{{subRun, req.RuntimeDir}, {subWork, req.WorkDir}} {
		src := filepath.Join(s.dir, b.sub)
		if err := copyEntries(b.host, src, uid); err != nil {
			return s, err
		}
		if err := unix.Mount(src, b.host, "", unix.MS_BIND, ""); err != nil {
			return s, fmt.Errorf("bind kernel tmpfs over %s: %w", b.host, err)
		}
		s.mounted = append(s.mounted, b.host)
		flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSYMFOLLOW)
		if err := unix.Mount("", b.host, "", flags, ""); err != nil {
			return s, fmt.Errorf("make %s nosymfollow: %w", b.host, err)
		}
	}
	return s, nil
}

// guardMountPoint makes, root's and mode 0755, the directories leading to
// dir inside the kernel's own /tmp or /dev/shm, when dir lies below one of
// them: bwrap makes its mount points there at every launch, and a kernel
// that could move those directories aside and leave a symlink out of the
// sandbox in their place would have a restart's bwrap make directories on
// the host. In the sticky /tmp and /dev/shm a kernel can neither rename nor
// remove what is root's. Below the kernel's home (its own) pool
// directories are refused.
func (s *scratch) guardMountPoint(cfg *Config, dir string) error {
	if strings.HasPrefix(dir+"/", cfg.Home+"/") {
		return fmt.Errorf("launch kernel: %s lies in the kernel's home %s, which the kernel can change", dir, cfg.Home)
	}
	for _, area := range []struct{ root, sub string }{{"/tmp", subTmp}, {"/var/tmp", subTmp}, {"/dev/shm", subShm}} {
		rel, below := strings.CutPrefix(dir, area.root+"/")
		if !below {
			continue
		}
		p := s.path(area.sub)
		for _, part := range strings.Split(rel, "/") {
			p = filepath.Join(p, part)
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("kernel scratch: mount point %s: %w", p, err)
			}
			st, err := os.Lstat(p)
			if err != nil {
				return fmt.Errorf("kernel scratch: mount point %s: %w", p, err)
			}
			if sys, ok := st.Sys().(*syscall.Stat_t); !st.IsDir() || !ok || sys.Uid != 0 {
				return fmt.Errorf("kernel scratch: mount point %s is not a directory of root's", p)
			}
			if err := os.Chmod(p, 0o755); err != nil {
				return fmt.Errorf("kernel scratch: mount point %s: %w", p, err)
			}
		}
	}
	return nil
}

// path is a directory of the tmpfs.
func (s *scratch) path(sub string) string { return filepath.Join(s.dir, sub) }

// release unmounts everything newScratch mounted and removes the mount
// point. Lazy unmounts: a file the gateway still holds open in WorkDir must
// not make the unmount fail (the memory goes when the file is closed).
func (s *scratch) release() error {
	var errs []error
	for i := len(s.mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(s.mounted[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", s.mounted[i], err))
		}
	}
	s.mounted = nil
	if err := os.Remove(s.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove kernel scratch dir: %w", err))
	}
	return errors.Join(errs...)
}

// emptyRun removes everything from the run directory once the kernel is
// dead: its sockets are useless and anything else it left there is the
// kernel's (a FIFO named like the next connection file would block the
// pool writing it on restart).
func (s *scratch) emptyRun() error {
	run := s.path(subRun)
	entries, err := os.ReadDir(run)
	if err != nil {
		return fmt.Errorf("empty kernel runtime dir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(run, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// giveRun hands the regular files the pool wrote into the run directory
// (the connection file of a restart) to the kernel's uid.
func (s *scratch) giveRun() error {
	return chownFiles(s.path(subRun), s.uid)
}

// copyEntries copies the regular files in src into dst, owned by uid.
// Anything else is refused: the pool only puts its connection file there.
func copyEntries(src, dst string, uid int) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s: %s is not a regular file; only files can be carried into the sandbox", src, e.Name())
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), uid); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, uid int) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("carry into sandbox: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("carry into sandbox: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("carry into sandbox: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chown(uid, uid)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("carry %s into sandbox: %w", src, err)
	}
	return nil
}

// chownFiles gives the root-owned regular files directly in dir to uid,
// without following symlinks.
func chownFiles(dir string, uid int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		if err := os.Lchown(filepath.Join(dir, e.Name()), uid, uid); err != nil {
			return fmt.Errorf("give %s to the kernel: %w", e.Name(), err)
		}
	}
	return nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	dev    string // major:minor: a tmpfs and its binds share it
	target string
}

// listMounts returns the tmpfs mounts (and their binds) whose source is tag.
func listMounts(tag string) ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root target options... - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, field := range fields {
			if field == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+2 >= len(fields) {
			continue
		}
		if fields[sep+1] == "tmpfs" && unescapeMount(fields[sep+2]) == tag {
			out = append(out, mountEntry{dev: fields[2], target: unescapeMount(fields[4])})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return out, nil
}

// unmountDevs lazily unmounts every entry on one of devs, deepest first.
func unmountDevs(mounts []mountEntry, devs map[string]bool) error {
	var targets []string
	for _, m := range mounts {
		if devs[m.dev] {
			targets = append(targets, m.target)
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	var errs []error
	for _, t := range targets {
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount stale %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
