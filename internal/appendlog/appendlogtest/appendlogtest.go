// Package appendlogtest helps the owners of an appendlog (the nonce store,
// the provenance ledger) test what they do when the disk fails them.
package appendlogtest

import (
	"sync/atomic"
	"syscall"

	"github.com/felhom/felhom-agent/internal/appendlog"
)

// FailingSync is the real file system, except that every file's Sync fails
// with EIO while Armed is set.
type FailingSync struct {
	appendlog.OS
	Armed *atomic.Bool
}

// OpenFile opens name on the real file system, with a Sync that fails while
// f.Armed is set.
func (f FailingSync) OpenFile(name string, flag int) (appendlog.File, error) {
	file, err := f.OS.OpenFile(name, flag)
	if err != nil {
		return nil, err
	}
	return failingSyncFile{file, f.Armed}, nil
}

type failingSyncFile struct {
	appendlog.File
	armed *atomic.Bool
}

func (f failingSyncFile) Sync() error {
	if f.armed.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}
