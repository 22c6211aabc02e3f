//go:build !linux

package storage

import (
	"errors"
	"os"
)

// The kernel directory scan relies on Linux system calls (openat, fstatat, O_NOFOLLOW
// semantics); cellgate runs kernels on Linux only. These stubs keep the package building
// elsewhere, for the parts that do not need them.

var errScanUnsupported = errors.New("storage: scanning kernel directories is supported on Linux only")

type entryStamp struct {
	mode     uint32
	size     int64
	mtime    int64
	ctime    int64
	dev      uint64
	ino      uint64
	nlink    uint64
	badName  bool
	longName bool
	tooDeep  bool
}

// Snapshot is the state of a kernel's working directory.
type Snapshot struct {
	entries   map[string]entryStamp
	truncated bool
}

const hardLinkReason = "has several hard links"

const (
	modeRegular = 0o100000
	modeDir     = 0o040000
)

func scanTree(int, FileLimits) (Snapshot, error) { return Snapshot{}, errScanUnsupported }

func openRegularInTree(int, string, entryStamp) (*os.File, entryStamp, string) {
	return nil, entryStamp{}, "unsupported platform"
}

func stampFile(*os.File) (entryStamp, error) { return entryStamp{}, errScanUnsupported }
func openRoot(string) (int, error)           { return -1, errScanUnsupported }
func closeRoot(int) error                    { return nil }
func dupRoot(int) (int, error)               { return -1, errScanUnsupported }
func describeMode(uint32) string             { return "not a regular file" }
