package appendlog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// memFS is an in-memory FS that models what a power loss keeps: a file's
// data and size survive only once the file is synced, and a directory entry
// (a creation, rename or removal) only once its directory is synced. It
// records every call and lets a test fail any of them.
type memFS struct {
	mu      sync.Mutex
	names   map[string]*inode // what the running system sees
	durable map[string]*inode // what survives a crash
	locks   map[string]bool
	calls   []string
	// fail, if set, is asked before every operation; a non-nil answer
	// fails it. A failed write still puts half its bytes in the file, as
	// a real one may.
	fail func(op, name string) error
}

type inode struct {
	data   []byte // page cache
	synced []byte // on stable storage
}

var errInjected = fmt.Errorf("injected: %w", syscall.EIO)

func newMemFS() *memFS {
	return &memFS{names: map[string]*inode{}, durable: map[string]*inode{}, locks: map[string]bool{}}
}

// put installs a file whose content is already durable.
func (m *memFS) put(name string, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino := &inode{data: slices.Clone(data), synced: slices.Clone(data)}
	m.names[name], m.durable[name] = ino, ino
}

// content is what a reader of name sees now.
func (m *memFS) content(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ino, ok := m.names[name]
	if !ok {
		return nil, false
	}
	return slices.Clone(ino.data), true
}

// crash returns the file system as it is after a power loss now: only
// synced data under durably linked names, no locks, nothing failing.
func (m *memFS) crash() *memFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := newMemFS()
	for name, ino := range m.durable {
		n := &inode{data: slices.Clone(ino.synced), synced: slices.Clone(ino.synced)}
		c.names[name], c.durable[name] = n, n
	}
	return c
}

// takeCalls returns the calls recorded since the last takeCalls.
func (m *memFS) takeCalls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls
	m.calls = nil
	return c
}

// op records a call and asks fail about it; m.mu is held.
func (m *memFS) op(op, name string) error {
	m.calls = append(m.calls, op+" "+filepath.Base(name))
	if m.fail != nil {
		return m.fail(op, name)
	}
	return nil
}

func (m *memFS) OpenFile(name string, flag int) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.op("open", name); err != nil {
		return nil, err
	}
	ino, ok := m.names[name]
	switch {
	case !ok && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case !ok:
		ino = &inode{}
		m.names[name] = ino
	case flag&os.O_TRUNC != 0:
		ino.data = nil
	}
	return &memFile{fs: m, name: name, ino: ino}, nil
}

func (m *memFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.op("rename", oldname); err != nil {
		return err
	}
	ino, ok := m.names[oldname]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	m.names[newname] = ino
	delete(m.names, oldname)
	return nil
}

func (m *memFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.op("remove", name); err != nil {
		return err
	}
	if _, ok := m.names[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(m.names, name)
	return nil
}

func (m *memFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.op("syncdir", dir); err != nil {
		return err
	}
	for name := range m.durable {
		if filepath.Dir(name) == dir {
			delete(m.durable, name)
		}
	}
	for name, ino := range m.names {
		if filepath.Dir(name) == dir {
			m.durable[name] = ino
		}
	}
	return nil
}

func (m *memFS) Lock(name string) (io.Closer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.op("lock", name); err != nil {
		return nil, err
	}
	if m.locks[name] {
		return nil, fmt.Errorf("%w: %s", ErrLocked, name)
	}
	m.locks[name] = true
	return closerFunc(func() error {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.locks, name)
		return nil
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

type memFile struct {
	fs     *memFS
	name   string
	ino    *inode
	closed bool
}

var errFileClosed = errors.New("file already closed")

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errFileClosed
	}
	if off >= int64(len(f.ino.data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, f.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errFileClosed
	}
	err := f.fs.op("write", f.name)
	if err != nil {
		p = p[:len(p)/2]
	}
	if end := off + int64(len(p)); end > int64(len(f.ino.data)) {
		f.ino.data = append(f.ino.data, make([]byte, end-int64(len(f.ino.data)))...)
	}
	copy(f.ino.data[off:], p)
	return len(p), err
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errFileClosed
	}
	if err := f.fs.op("truncate", f.name); err != nil {
		return err
	}
	if size <= int64(len(f.ino.data)) {
		f.ino.data = f.ino.data[:size]
	} else {
		f.ino.data = append(f.ino.data, make([]byte, size-int64(len(f.ino.data)))...)
	}
	return nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errFileClosed
	}
	if err := f.fs.op("sync", f.name); err != nil {
		return err
	}
	f.ino.synced = slices.Clone(f.ino.data)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errFileClosed
	}
	return int64(len(f.ino.data)), nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errFileClosed
	}
	f.closed = true
	return nil
}

// failNth fails the nth (from 1) call of op on a name ending in suffix.
func failNth(op, suffix string, nth int) func(string, string) error {
	seen := 0
	return func(o, name string) error {
		if o != op || !strings.HasSuffix(name, suffix) {
			return nil
		}
		seen++
		if seen == nth {
			return errInjected
		}
		return nil
	}
}
