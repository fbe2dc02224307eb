//go:build killpoints

package killpoint

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// Enabled reports whether this build honours Env.
const Enabled = true

var spec = sync.OnceValue(func() string { return os.Getenv(Env) })

// Reach kills the process with SIGKILL when Env names point (and label).
func Reach(point, label string) {
	if !matches(spec(), point, label) {
		return
	}
	fmt.Fprintf(os.Stderr, "killpoint: %s %s\n", point, label)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way; nothing of this process runs on
}
