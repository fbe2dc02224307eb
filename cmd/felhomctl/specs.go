package main

import (
	"flag"

	"github.com/felhom/felhom-agent/internal/specfile"
)

const specFormatDoc = `
Desired state is YAML. A file holds one or more documents separated by
"---"; each document is either one guest:

  host: pve1
  vmid: 101
  kind: qemu            # qemu | lxc
  state: running        # running | stopped | absent
  name: web
  memory: 2GiB          # or 2048 (MiB)
  cores: 2
  disks: {scsi0: "local-lvm:32"}
  tags: [prod]

or a list of guests under "guests:". A directory means every *.yaml and
*.yml file in it (not in subdirectories), in name order. An unknown key is
an error, and a guest (host/vmid) may appear only once. Every problem of
every file is reported at once, and nothing is sent.

Limits: a file is at most 16 MiB; memory is 16 MiB to 4 TiB, a disk at
most 1 PiB; a guest has at most 64 tags, 300 disks and 256 options, and a
value is at most 8 KiB.
`

// specsFlag parses the flags of a command that reads desired state with
// -f FILE|DIR, and loads and validates it.
func (c *command) specsFlag(name, help string, args []string) ([]guestSpec, error) {
	return c.specsFlagWith(name, help, args, nil)
}

// specsFlagWith is specsFlag with more flags, which more adds.
func (c *command) specsFlagWith(name, help string, args []string, more func(*flag.FlagSet)) ([]guestSpec, error) {
	fs := c.newFlagSet(name, help)
	file := fs.String("f", "", "desired state `FILE` or directory (required)")
	if more != nil {
		more(fs)
	}
	if _, err := c.parseFlags(fs, args, 0); err != nil {
		return nil, err
	}
	if *file == "" {
		return nil, usageErrorf("-f FILE|DIR is required")
	}
	return loadSpecs(*file)
}

// guestSpec is one spec as read from a desired-state file.
type guestSpec = specfile.Guest

// loadSpecs reads the desired state at path (internal/specfile); any
// problem is a usageError.
func loadSpecs(path string) ([]guestSpec, error) {
	specs, err := specfile.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	return specs, nil
}
