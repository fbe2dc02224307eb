//go:build !linux

package appendlog

import "os"

// datasync falls back to fsync where fdatasync(2) is not available.
func datasync(f *os.File) error { return f.Sync() }
