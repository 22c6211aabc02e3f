package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// A kernel's working directory is written by untrusted code, which may race with us: swap a file
// for a symlink, a FIFO or a directory between two system calls, create millions of entries, or
// name files with bytes that are not text. So the scan works on directory file descriptors
// (openat/fstatat relative to a directory fd, never a path string resolved by the kernel from the
// top), never follows a symlink (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW), opens without blocking
// (O_NONBLOCK: a FIFO swapped in would otherwise block the open forever), checks after opening
// that the fd is the regular file it examined (same device and inode), and stops after a bounded
// number of entries.

// entryStamp is what a change is detected by. ctime changes on every write and metadata change
// even when a write preserves size and mtime.
type entryStamp struct {
	mode  uint32 // unix.S_IFMT bits only
	size  int64
	mtime int64 // ns
	ctime int64 // ns
	dev   uint64
	ino   uint64
	nlink uint64

	badName  bool // name is not text we can store or report; never descended or uploaded
	longName bool // path longer than maxNameBytes (which ValidFileName would refuse); likewise
	tooDeep  bool // a directory below the depth limit; not scanned
}

// Snapshot is the state of a kernel's working directory, taken before an execution so that the
// files the execution creates or changes can be found after it.
type Snapshot struct {
	entries   map[string]entryStamp // by relative path with '/' separators
	truncated bool                  // the entry limit stopped the scan
}

type scanner struct {
	maxDepth      int
	budget        int // entries still allowed
	includeHidden bool
	snap          Snapshot
}

// openDirNoFollow opens name (a single component) in dirFD as a directory, refusing symlinks.
func openDirNoFollow(dirFD int, name string) (int, error) {
	return unix.Openat(dirFD, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

func scanTree(rootFD int, limits FileLimits) (Snapshot, error) {
	s := scanner{
		maxDepth:      limits.MaxDepth,
		budget:        limits.MaxEntries,
		includeHidden: limits.IncludeHidden,
		snap:          Snapshot{entries: make(map[string]entryStamp)},
	}
	// A fresh open file description: directory read offsets are shared between dup'ed fds.
	fd, err := openDirNoFollow(rootFD, ".")
	if err != nil {
		return Snapshot{}, fmt.Errorf("storage: open kernel directory: %w", err)
	}
	if err := s.scanDir(fd, "", 0); err != nil {
		return Snapshot{}, err
	}
	return s.snap, nil
}

// scanDir records the entries of the directory open at fd (which it closes).
func (s *scanner) scanDir(fd int, prefix string, depth int) error {
	dir := os.NewFile(uintptr(fd), prefix)
	defer dir.Close()

	names, err := dir.Readdirnames(s.budget + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		if prefix == "" {
			return fmt.Errorf("storage: read kernel directory: %w", err)
		}
		return nil // a subdirectory removed or made unreadable under us: nothing to record
	}
	if len(names) > s.budget {
		names = names[:s.budget]
		s.snap.truncated = true
	}
	s.budget -= len(names)
	slices.Sort(names) // uploads and notices come out in a stable order

	for _, name := range names {
		if !s.includeHidden && (strings.HasPrefix(name, ".") || name == "__pycache__") {
			continue // caches and config of the kernel's libraries (~/.cache, .ipython, ...)
		}
		rel := prefix + name
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // removed since readdir
		}
		stamp := stampOf(&st)
		if entryNameProblem(name) != "" {
			stamp.badName = true
			s.snap.entries[rel] = stamp
			continue
		}
		if len(rel) > maxNameBytes {
			stamp.longName = true
			s.snap.entries[rel] = stamp
			continue
		}
		if stamp.mode == unix.S_IFDIR {
			if depth+1 > s.maxDepth {
				stamp.tooDeep = true
				s.snap.entries[rel] = stamp
				continue
			}
			s.snap.entries[rel] = stamp
			sub, err := openDirNoFollow(fd, name)
			if err != nil {
				continue // replaced by a symlink or removed since fstatat
			}
			var subSt unix.Stat_t
			if unix.Fstat(sub, &subSt) != nil || uint64(subSt.Dev) != stamp.dev || uint64(subSt.Ino) != stamp.ino {
				_ = unix.Close(sub)
				continue // swapped for another directory since fstatat
			}
			if err := s.scanDir(sub, rel+"/", depth+1); err != nil {
				return err
			}
			if s.snap.truncated {
				return nil
			}
			continue
		}
		s.snap.entries[rel] = stamp
	}
	return nil
}

func stampOf(st *unix.Stat_t) entryStamp {
	return entryStamp{
		mode:  uint32(st.Mode) & unix.S_IFMT,
		size:  int64(st.Size),
		mtime: unix.TimespecToNsec(st.Mtim),
		ctime: unix.TimespecToNsec(st.Ctim),
		dev:   uint64(st.Dev),
		ino:   uint64(st.Ino),
		nlink: uint64(st.Nlink),
	}
}

// openRegularInTree opens rel (components separated by '/') below rootFD for reading, refusing
// symlinks at every component, and checks that what it opened is the regular file described by
// want. It returns the file and its stamp, or a reason for skipping it. The caller closes the file.
func openRegularInTree(rootFD int, rel string, want entryStamp) (*os.File, entryStamp, string) {
	parts := strings.Split(rel, "/")
	dirFD := rootFD
	closeDir := func() {
		if dirFD != rootFD {
			_ = unix.Close(dirFD)
		}
	}
	for _, part := range parts[:len(parts)-1] {
		next, err := openDirNoFollow(dirFD, part)
		closeDir()
		if err != nil {
			return nil, entryStamp{}, "its directory changed while being read"
		}
		dirFD = next
	}
	fd, err := unix.Openat(dirFD, parts[len(parts)-1],
		unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	closeDir()
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, entryStamp{}, "replaced by a symbolic link while being read"
		}
		return nil, entryStamp{}, "removed or unreadable"
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = unix.Close(fd)
		return nil, entryStamp{}, "unreadable"
	}
	got := stampOf(&st)
	switch {
	case got.mode != unix.S_IFREG:
		_ = unix.Close(fd)
		return nil, entryStamp{}, "replaced by something other than a regular file while being read"
	case got.dev != want.dev || got.ino != want.ino:
		_ = unix.Close(fd)
		return nil, entryStamp{}, "replaced while being read"
	case got.nlink > 1:
		_ = unix.Close(fd)
		return nil, entryStamp{}, hardLinkReason
	}
	return os.NewFile(uintptr(fd), rel), got, ""
}

// stampFile is the current stamp of an open file.
func stampFile(f *os.File) (entryStamp, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return entryStamp{}, fmt.Errorf("storage: fstat %s: %w", f.Name(), err)
	}
	return stampOf(&st), nil
}

// openRoot opens the kernel's working directory itself; its path comes from the server, but its
// last component must still not be a symlink.
func openRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("storage: open kernel directory %s: %w", dir, err)
	}
	return fd, nil
}

func closeRoot(fd int) error {
	return unix.Close(fd)
}

// dupRoot gives an upload its own descriptor of the kernel's directory.
func dupRoot(fd int) (int, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("storage: duplicate kernel directory descriptor: %w", err)
	}
	return dup, nil
}

func describeMode(mode uint32) string {
	switch mode {
	case unix.S_IFLNK:
		return "symbolic link (not followed)"
	case unix.S_IFIFO:
		return "named pipe (not a regular file)"
	case unix.S_IFSOCK:
		return "socket (not a regular file)"
	case unix.S_IFCHR:
		return "character device (not a regular file)"
	case unix.S_IFBLK:
		return "block device (not a regular file)"
	case unix.S_IFDIR:
		return "directory"
	default:
		return "not a regular file"
	}
}

// hardLinkReason: a hard link in the kernel's directory may name a file the kernel cannot read
// but the server can (where fs.protected_hardlinks is off); uploading it would leak it.
const hardLinkReason = "has several hard links (may be a file from elsewhere)"

const (
	modeRegular = unix.S_IFREG
	modeDir     = unix.S_IFDIR
)
