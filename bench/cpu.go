package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU time: the work a run did, without its waits. On a shared virtual
// machine it still swings from run to run (contention costs CPU too), so
// compare builds over several runs.

// userHZ is the unit of /proc's CPU times: fixed at 100 a second for
// userspace on Linux, whatever the kernel's own tick.
const userHZ = 100

// processCPU is the user and system CPU time process pid has used.
func processCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(stat))
}

// parseProcStat returns utime + stime of a /proc/PID/stat line. The
// command name, field 2, is in parentheses and may hold spaces and
// parentheses itself, so the fields are counted from the last ")".
func parseProcStat(line string) (time.Duration, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat %.40q: no command name", line)
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat %.40q: %d fields after the command name, want at least 13", line, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("proc stat: CPU time %q is not a count of ticks", s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// selfCPU is the CPU time this process has used: the embedded server, the
// simulators and the benchmark's own driver.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// workersCPU sums the CPU time of the hosts' worker processes.
func workersCPU(hosts []*host) (time.Duration, error) {
	var sum time.Duration
	for _, h := range hosts {
		if h.child == nil || h.child.Process == nil {
			return 0, fmt.Errorf("host %s has no worker process", h.id)
		}
		d, err := processCPU(h.child.Process.Pid)
		if err != nil {
			return 0, fmt.Errorf("worker of %s: %w", h.id, err)
		}
		sum += d
	}
	return sum, nil
}
