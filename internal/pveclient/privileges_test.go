package pveclient

import (
	"context"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/felhom/felhom-agent/internal/pvesim"
)

// aclOf grants privs as the README's pveum commands do: the role on each
// required path, propagated.
func aclOf(privs []Privilege) []pvesim.ACL {
	byPath := map[string]*pvesim.ACL{}
	var out []pvesim.ACL
	for _, p := range privs {
		if byPath[p.Path] == nil {
			out = append(out, pvesim.ACL{Path: p.Path, Propagate: true})
			byPath[p.Path] = &out[len(out)-1]
		}
	}
	for _, p := range privs {
		for i := range out {
			if out[i].Path == p.Path {
				out[i].Privileges = append(out[i].Privileges, p.Name)
			}
		}
	}
	return out
}

// The start-up check names every privilege the token lacks.
func TestCheckNamesMissingPrivileges(t *testing.T) {
	all := RequiredPrivileges("pve1")
	without := func(name string) []Privilege {
		return slices.DeleteFunc(slices.Clone(all), func(p Privilege) bool { return p.Name == name })
	}
	tests := []struct {
		name    string
		acl     []pvesim.ACL
		missing []string
	}{
		{name: "the least-privilege role", acl: aclOf(all)},
		{name: "no Sys.Audit on the node", acl: aclOf(without("Sys.Audit")), missing: []string{"Sys.Audit on /nodes/pve1"}},
		{name: "no VM.Allocate, no Datastore.Allocate", acl: aclOf(slices.DeleteFunc(slices.Clone(all), func(p Privilege) bool {
			return p.Name == "VM.Allocate" || p.Name == "Datastore.Allocate"
		})), missing: []string{"VM.Allocate on /vms (propagated)", "Datastore.Allocate on /storage (propagated)"}},
		{name: "guests granted one by one", acl: append(aclOf(slices.DeleteFunc(slices.Clone(all), func(p Privilege) bool { return p.Path == "/vms" })),
			pvesim.ACL{Path: "/vms/101", Privileges: []string{"VM.Audit"}}), missing: []string{"VM.Audit on /vms (propagated)", "VM.PowerMgmt on /vms (propagated)"}},
		{name: "not propagated to the guests", acl: func() []pvesim.ACL {
			acl := aclOf(all)
			for i := range acl {
				if acl[i].Path == "/vms" {
					acl[i].Propagate = false
				}
			}
			return acl
		}(), missing: []string{"VM.Audit on /vms (propagated)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := pvesim.Start(pvesim.Config{Node: "pve1", TokenACL: tt.acl})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			c, err := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: srv.TokenSecret(), RootCAs: srv.RootCAs(), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			err = Check(context.Background(), c, "pve1")
			if len(tt.missing) == 0 {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			var me *MissingPrivilegesError
			if !errors.As(err, &me) {
				t.Fatalf("Check error %v, want the missing privileges named", err)
			}
			for _, want := range tt.missing {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

// The README's pveum commands grant exactly the role the check asks for,
// on exactly its paths.
func TestREADMEGrantsTheRequiredPrivileges(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`pveum role add FelhomAgent --privs "([^"]+)"`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no `pveum role add FelhomAgent --privs \"...\"`")
	}
	got := strings.Fields(string(m[1]))
	if want := slices.Sorted(slices.Values(Role)); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
		t.Fatalf("README's role %v, want %v", got, want)
	}
	loop := regexp.MustCompile(`for path in ([^;]+); do`).FindSubmatch(readme)
	if loop == nil {
		t.Fatal("README.md has no `for path in ...; do` granting the role")
	}
	var want []string
	for _, p := range RequiredPrivileges("NODE") {
		want = append(want, strings.ReplaceAll(p.Path, "NODE", "$NODE"))
	}
	if got := strings.Fields(string(loop[1])); !slices.Equal(slices.Compact(slices.Sorted(slices.Values(want))), slices.Sorted(slices.Values(got))) {
		t.Fatalf("README grants the role on %v, want %v", got, slices.Compact(slices.Sorted(slices.Values(want))))
	}
}

// Since early 2026 pve answers every token it cannot verify with 401
// "Authentication failed!", three seconds late; the check says what to do.
func TestCheckRejectedToken(t *testing.T) {
	srv, err := pvesim.Start(pvesim.Config{Node: "pve1", StrictPVE: true, AuthFailureDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := New(Config{URL: srv.URL(), TokenID: srv.TokenID(), TokenSecret: "wrong", RootCAs: srv.RootCAs(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = Check(context.Background(), c, "pve1")
	if want := "the API token was rejected (401 Authentication failed!): check the token id and secret"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Check error %v, want %q", err, want)
	}
}
