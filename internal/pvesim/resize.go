package pvesim

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

var sizeParam = regexp.MustCompile(`^(\+)?(\d+(?:\.\d+)?)([KMGT])?$`)

// resize is PUT /nodes/{node}/qemu|lxc/{vmid}/resize: a "resize" task that
// grows a disk. Neither qemu-server nor pve-container can shrink one, so a
// disk.shrink has no API to go through.
func (s *Server) resize(c *call, kind Kind, vmid int) (any, *apiError) {
	disk := c.param("disk")
	if disk == "" {
		return nil, paramErr("disk", "property is missing and it is not optional")
	}
	m := sizeParam.FindStringSubmatch(c.param("size"))
	if m == nil {
		return nil, paramErr("size", "value does not match the regex pattern")
	}
	digest := c.param("digest")
	skiplock := c.flag("skiplock")
	var newSize uint64
	upid := s.startTask(c, taskSpec{typ: "resize", vmid: vmid, kind: kind, check: func(t *task) error {
		g := s.guests[vmid]
		lockErr := func() error {
			if skiplock && kind == KindQEMU {
				return nil
			}
			return g.checkLock()
		}
		digestErr := func() error {
			if digest == "" || digest == g.digest() {
				return nil
			}
			if kind == KindLXC {
				return fmt.Errorf("detected modified configuration - file changed by other user? Try again.")
			}
			return fmt.Errorf("checksum mismatch (file change by other user?)")
		}
		// the two services check in a different order
		first, second := digestErr, lockErr
		if kind == KindLXC {
			first, second = lockErr, digestErr
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
		spec, ok := g.conf[disk]
		if !ok || !isDiskKey(kind, disk) || strings.HasPrefix(disk, "unused") {
			return fmt.Errorf("disk '%s' does not exist", disk)
		}
		volid, size, ok := diskVolume(spec)
		if !ok {
			return fmt.Errorf("you can't resize a cdrom")
		}
		if v := s.volumes[volid]; v != nil && v.size > 0 {
			size = v.size
		}
		n, _ := strconv.ParseFloat(m[2], 64)
		newSize = uint64(n * float64(unitBytes(m[3])))
		if m[1] == "+" {
			newSize += size
		}
		if newSize < size {
			if kind == KindLXC {
				return fmt.Errorf("unable to shrink disk size")
			}
			return fmt.Errorf("shrinking disks is not supported")
		}
		if newSize == size && kind == KindLXC {
			return fmt.Errorf("disk is already at specified size")
		}
		return nil
	}, run: func(t *task) (int, error) {
		g := s.guests[vmid]
		volid, _, _ := diskVolume(g.conf[disk])
		if v := s.volumes[volid]; v != nil {
			v.size = newSize
		}
		parts := strings.Split(g.conf[disk], ",")
		out := parts[:1]
		for _, p := range parts[1:] {
			if !strings.HasPrefix(p, "size=") {
				out = append(out, p)
			}
		}
		g.conf[disk] = strings.Join(append(out, "size="+formatSize(newSize)), ",")
		return 0, nil
	}})
	return upid, nil
}

func unitBytes(unit string) uint64 {
	switch unit {
	case "K":
		return 1 << 10
	case "M":
		return 1 << 20
	case "G":
		return 1 << 30
	case "T":
		return 1 << 40
	}
	return 1
}
