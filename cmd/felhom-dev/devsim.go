package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// The simulated node of `dev` is the same node across restarts: its state
// is kept in the data directory (pvesim.json), so that a guest destroyed
// before a restart stays destroyed and a workflow resumed after it finds
// what it left, and it listens where it listened before (pvesim-addr).

const (
	simStateFile = "pvesim.json"
	simAddrFile  = "pvesim-addr"
)

// startDevSimulator starts the simulator of dev: in strict mode, on the
// address of --pvesim-addr, else the last run's, else a free port; with
// its state from the data directory, or seeded with demo guests when there
// is none yet. It returns the server and the banner's description of it.
func startDevSimulator(f devFlags, node string, log *slog.Logger) (*pvesim.Server, string, error) {
	addr, err := devSimAddr(f)
	if err != nil {
		return nil, "", err
	}
	state := filepath.Join(f.dataDir, simStateFile)
	sim, err := pvesim.Start(pvesim.Config{StrictPVE: true, Node: node, Addr: addr, TaskDuration: f.taskDuration,
		StateFile: state, Logger: log})
	if err != nil {
		return nil, "", fmt.Errorf("%w (choose another with --pvesim-addr)", err)
	}
	where := fmt.Sprintf("%s (simulator; its state, kept across restarts: %s)", sim.URL(), state)
	if sim.Restored() {
		where = fmt.Sprintf("%s (simulator, %d guests restored from %s)", sim.URL(), len(sim.Guests()), state)
	} else if err := sim.SeedDemo(); err != nil {
		sim.Close()
		return nil, "", fmt.Errorf("seed the simulator: %w", err)
	} else {
		where = fmt.Sprintf("%s (simulator, seeded with demo guests; its state, kept across restarts: %s)", sim.URL(), state)
	}
	if err := os.WriteFile(filepath.Join(f.dataDir, simAddrFile), []byte(sim.Addr()+"\n"), 0o600); err != nil {
		sim.Close()
		return nil, "", fmt.Errorf("keep the simulator's address: %w", err)
	}
	return sim, where, nil
}

// devSimAddr is --pvesim-addr, else the address the last run listened on,
// else any free port on 127.0.0.1.
func devSimAddr(f devFlags) (string, error) {
	if f.pveAddr != "" {
		return f.pveAddr, nil
	}
	b, err := os.ReadFile(filepath.Join(f.dataDir, simAddrFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "127.0.0.1:0", nil
	case err != nil:
		return "", fmt.Errorf("the simulator's last address: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
