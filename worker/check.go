package worker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"

	"github.com/felhom/felhom-agent/internal/pveclient"
	"github.com/felhom/felhom-agent/internal/temporalclient"
	"github.com/felhom/felhom-agent/internal/visibility"
)

// CheckResult is the outcome of one check of `felhom-agent check`.
type CheckResult struct {
	Name string // what was checked: "temporal", "proxmox", ...
	Err  error  // nil when it passed
	Note string // what passed, when it did
}

// Check runs every check a valid cfg allows, without starting the worker or
// changing anything: Temporal reachable and the namespace present with the
// search attributes the workflows set, Proxmox reachable with this node,
// the token's privileges, the signer keys in force, and the host-local
// state files writable by this user. rootCAs is as in OpenHost.
func Check(ctx context.Context, cfg Config, log *slog.Logger, rootCAs *x509.CertPool) []CheckResult {
	return []CheckResult{
		checkTemporal(ctx, cfg, log),
		checkProxmox(ctx, cfg, rootCAs),
		checkSigners(cfg),
		checkState(cfg),
	}
}

func checkTemporal(ctx context.Context, cfg Config, log *slog.Logger) CheckResult {
	r := CheckResult{Name: "temporal"}
	ctx, cancel := context.WithTimeout(ctx, cfg.Proxmox.Timeout)
	defer cancel()
	c, err := temporalclient.Dial(ctx, clientConfig(cfg.Temporal), log, nil)
	if err != nil {
		r.Err = err
		return r
	}
	defer c.Close()
	ns := cfg.Temporal.Namespace
	if _, err := c.WorkflowService().DescribeNamespace(ctx, &workflowservice.DescribeNamespaceRequest{Namespace: ns}); err != nil {
		var nf *serviceerror.NamespaceNotFound
		if errors.As(err, &nf) {
			r.Err = fmt.Errorf("temporal.namespace: namespace %q does not exist on %s: create it (temporal operator namespace create --namespace %s)", ns, cfg.Temporal.Address, ns)
		} else {
			r.Err = fmt.Errorf("temporal.namespace: describe namespace %q: %w", ns, err)
		}
		return r
	}
	sa, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: ns})
	if err != nil {
		r.Err = fmt.Errorf("temporal: list the search attributes of namespace %q: %w", ns, err)
		return r
	}
	want := visibility.SearchAttributes()
	var missing []string
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if got, ok := sa.GetCustomAttributes()[name]; !ok || got != want[name] {
			missing = append(missing, fmt.Sprintf("%s (%s)", name, want[name]))
		}
	}
	if len(missing) > 0 {
		r.Err = fmt.Errorf("temporal: namespace %q lacks the search attributes %s: register them (temporal operator search-attribute create)", ns, strings.Join(missing, ", "))
		return r
	}
	r.Note = fmt.Sprintf("%s, namespace %s with the search attributes", cfg.Temporal.Address, ns)
	return r
}

func checkProxmox(ctx context.Context, cfg Config, rootCAs *x509.CertPool) CheckResult {
	r := CheckResult{Name: "proxmox"}
	pve, err := pveclient.New(pveclient.Config{
		URL: cfg.Proxmox.URL, TokenID: cfg.Proxmox.TokenID,
		TokenSecret: cfg.Proxmox.TokenSecret, TokenSecretFile: cfg.Proxmox.TokenSecretFile,
		CAFile: cfg.Proxmox.CAFile, RootCAs: rootCAs, InsecureSkipVerify: cfg.Proxmox.Insecure,
		Timeout: cfg.Proxmox.Timeout,
	})
	if err != nil {
		r.Err = err
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Proxmox.Timeout)
	defer cancel()
	// The API, the certificate, the token, the node and the token's
	// privileges (pveclient.RequiredPrivileges), each failure named.
	if err := pveclient.Check(ctx, pve, cfg.Proxmox.Node); err != nil {
		r.Err = fmt.Errorf("proxmox (token %s): %w", cfg.Proxmox.TokenID, err)
		return r
	}
	r.Note = fmt.Sprintf("%s, node %s, token %s with the privileges it needs", cfg.Proxmox.URL, cfg.Proxmox.Node, cfg.Proxmox.TokenID)
	return r
}

func checkSigners(cfg Config) CheckResult {
	r := CheckResult{Name: "signers"}
	if err := CheckSigners(cfg); err != nil {
		r.Err = err
		return r
	}
	r.Note = "the keys in force are decided"
	return r
}

// checkState checks that this user may write each host-local file, or
// create it in its directory, without writing anything.
func checkState(cfg Config) CheckResult {
	r := CheckResult{Name: "state"}
	var errs []error
	for _, f := range []struct{ field, path string }{
		{"nonce_store", cfg.NonceStore}, {"pinned_signers", cfg.PinnedSigners}, {"provenance_ledger", cfg.ProvenanceLedger},
	} {
		if err := writable(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.field, err))
		}
	}
	if r.Err = errors.Join(errs...); r.Err == nil {
		r.Note = "nonce store, pinned signers and provenance ledger writable"
	}
	return r
}

func writable(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s cannot be written: %w", path, err)
	}
	dir := filepath.Dir(path)
	probe, err := os.CreateTemp(dir, ".felhom-check-*")
	if err != nil {
		return fmt.Errorf("%s does not exist and cannot be created in %s: %w", path, dir, err)
	}
	name := probe.Name()
	return errors.Join(probe.Close(), os.Remove(name))
}
