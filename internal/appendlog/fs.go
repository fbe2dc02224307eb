package appendlog

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/felhom/felhom-agent/internal/filelock"
)

// File is the part of an open file the log uses.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Truncate(size int64) error
	// Sync makes the file's data and size durable (fdatasync(2)).
	Sync() error
	Size() (int64, error)
	Close() error
}

// FS is the file system the log works on. Names are paths as passed to
// Open, with ".lock" or ".compact" appended for the sibling files.
type FS interface {
	// OpenFile opens name with flag (os.O_RDWR, os.O_CREATE, os.O_TRUNC)
	// and permission 0600 when created.
	OpenFile(name string, flag int) (File, error)
	Rename(oldname, newname string) error
	Remove(name string) error
	// SyncDir makes the directory's entries (creations, renames) durable.
	SyncDir(dir string) error
	// Lock takes an exclusive lock named name, held until the returned
	// Closer is closed, or fails with an error wrapping ErrLocked if it is
	// held elsewhere.
	Lock(name string) (io.Closer, error)
}

// OS is the operating system's file system, what a nil Options.FS means.
// An owner's tests can wrap it to fail chosen operations.
type OS struct{}

type osFile struct{ *os.File }

func (OS) OpenFile(name string, flag int) (File, error) {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (f osFile) Sync() error { return datasync(f.File) }

func (f osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (OS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

func (OS) Remove(name string) error { return os.Remove(name) }

func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (OS) Lock(name string) (io.Closer, error) {
	c, err := filelock.TryLock(name)
	if errors.Is(err, filelock.ErrLocked) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, name)
	}
	if err != nil {
		return nil, fmt.Errorf("appendlog: %w", err)
	}
	return c, nil
}
