// Package filelock takes the exclusive, non-blocking advisory lock (flock)
// that keeps a second agent process off a host-local file: the nonce store,
// the provenance ledger, the pinned signer keys.
//
// The lock is held on a separate lock file, so that replacing the guarded
// file by a rename (compaction, an atomic rewrite) does not drop it. flock
// locks belong to the open file description: a second TryLock in the same
// process is refused just like one from another process. The kernel drops
// the lock when the process dies, however it dies.
package filelock

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrLocked means another holder has the lock.
var ErrLocked = errors.New("file is locked by another process")

// TryLock creates (if needed) and locks the file at path, or fails at once
// with an error wrapping ErrLocked. Closing the returned Closer releases the
// lock.
func TryLock(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}
