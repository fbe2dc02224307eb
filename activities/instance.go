package activities

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/felhom/felhom-agent/activities/ledger"
	"github.com/felhom/felhom-agent/gate"
)

// Guest instances. Proxmox reuses VMIDs, so the agent never takes a VMID
// for the guest it once created there. The create writes a random marker
// line into the guest's description and records it in the ledger; a live
// guest is the ledger's entry only if it carries that marker (and, for a
// QEMU VM, the SMBIOS uuid Proxmox generated for it). Description and
// smbios1 are outside the config allow-list, so the hub cannot write either
// onto an existing guest.

// markerLine prefixes the agent's instance marker in a guest's description.
const markerLine = "felhom-instance: "

var markerPattern = regexp.MustCompile(`(?m)^felhom-instance: ([0-9a-f]{32})\s*$`)

// newInstanceMarker returns a fresh random marker.
func newInstanceMarker() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("instance marker: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// markerOf returns the instance marker in a guest's description, "" for none.
func markerOf(description string) string {
	m := markerPattern.FindAllStringSubmatch(description, -1)
	if len(m) != 1 {
		return "" // none, or several: not one instance's
	}
	return m[0][1]
}

// smbiosUUID returns the uuid of a QEMU guest's smbios1 setting, "" for none.
func smbiosUUID(config map[string]string) string {
	for _, opt := range strings.Split(config["smbios1"], ",") {
		if v, ok := strings.CutPrefix(opt, "uuid="); ok {
			return strings.ToLower(v)
		}
	}
	return ""
}

// volatileConfig are config keys that change while a guest stays the same
// instance: they are left out of its config fingerprint.
var volatileConfig = map[string]bool{"lock": true, "digest": true}

// instanceOf identifies the live guest g for binding an admission to it: its
// agent marker and SMBIOS uuid where it has them, else a fingerprint of its
// configuration, so that a guest that took the VMID later, or a guest whose
// configuration changed since the approval was admitted, is not the same.
// It is "" for a guest that does not exist.
func instanceOf(g Guest) string {
	if !g.Exists {
		return ""
	}
	var parts []string
	if m := markerOf(g.Description); m != "" {
		parts = append(parts, "marker:"+m)
	}
	if g.Kind == KindQEMU {
		if u := smbiosUUID(g.Config); u != "" {
			parts = append(parts, "smbios:"+u)
		}
	}
	if len(parts) == 0 {
		h := sha256.New()
		keys := make([]string, 0, len(g.Config))
		for k := range g.Config {
			if !volatileConfig[k] {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(h, "%q=%q\n", k, g.Config[k])
		}
		parts = append(parts, "config:"+hex.EncodeToString(h.Sum(nil)))
	}
	return g.Kind + "/" + strings.Join(parts, ",")
}

// volumesOf returns the volume ids of g's disks.
func volumesOf(g Guest) []string {
	var out []string
	for _, v := range g.Disks {
		vol, _, _ := strings.Cut(v, ",")
		if strings.Contains(vol, ":") {
			out = append(out, vol)
		}
	}
	slices.Sort(out)
	return out
}

// provenanceOf is what this host knows about the live guest g: the gate's
// Provenance, built from the ledger and from g as Proxmox shows it now. A
// ledger entry counts only for the instance it recorded.
func (a *Proxmox) provenanceOf(g Guest) gate.Provenance {
	if a.Ledger == nil || !g.Exists {
		return gate.Provenance{}
	}
	e, ok := a.Ledger.Entry(g.VMID)
	switch {
	case !ok, e.State != ledger.StateCreated, e.Kind != g.Kind, e.Instance == "":
		return gate.Provenance{}
	case markerOf(g.Description) != e.Instance:
		return gate.Provenance{}
	case e.SMBIOS != "" && smbiosUUID(g.Config) != e.SMBIOS:
		return gate.Provenance{}
	}
	return gate.Provenance{
		AgentCreated: true,
		Scratch:      e.Scratch,
		CreatedAt:    e.CreatedAt,
		InUse:        e.HandedOver || g.Status == "running",
		Volumes:      e.Volumes,
	}
}
