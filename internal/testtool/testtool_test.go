package testtool

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder stands in for the test a helper is given, recording how it ended.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Fatal(args ...any)         { r.fatal = fmt.Sprint(args...) }
func (r *recorder) Fatalf(f string, a ...any) { r.fatal = fmt.Sprintf(f, a...) }
func (r *recorder) Skip(args ...any)          { r.skip = fmt.Sprint(args...) }

// onlyOnPath leaves PATH holding one directory with an executable "present".
func onlyOnPath(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "present"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return dir
}

func TestNeed(t *testing.T) {
	dir := onlyOnPath(t)
	for _, tc := range []struct {
		ci        string
		tools     []string
		wantFatal bool
		wantSkip  bool
	}{
		{"", []string{"present"}, false, false},
		{"true", []string{"present"}, false, false},
		{"", []string{"present", "ssh-keygen"}, false, true},
		{"false", []string{"ssh-keygen"}, false, true},
		{"true", []string{"present", "ssh-keygen"}, true, false},
		{"1", []string{"temporal"}, true, false},
	} {
		t.Run(tc.ci+"/"+strings.Join(tc.tools, ","), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			Need(r, tc.tools...)
			if (r.fatal != "") != tc.wantFatal || (r.skip != "") != tc.wantSkip {
				t.Fatalf("CI=%q, need %v: fatal %q, skip %q", tc.ci, tc.tools, r.fatal, r.skip)
			}
			if msg := r.fatal + r.skip; msg != "" && !strings.Contains(msg, tc.tools[len(tc.tools)-1]+" not found on PATH") {
				t.Errorf("message %q does not name the missing program", msg)
			}
		})
	}
	t.Setenv("CI", "true")
	if got := Path(&recorder{TB: t}, "present"); got != filepath.Join(dir, "present") {
		t.Errorf("Path = %q", got)
	}
}

func TestCondition(t *testing.T) {
	onlyOnPath(t)
	t.Setenv("CI", "")
	if ok, err := Condition("tool:present"); !ok || err != nil {
		t.Errorf("present: %v, %v", ok, err)
	}
	if ok, err := Condition("tool:ssh-agent"); ok || err != nil {
		t.Errorf("missing outside CI: %v, %v; want false, nil", ok, err)
	}
	t.Setenv("CI", "true")
	if ok, err := Condition("tool:ssh-agent"); ok || err == nil || !strings.Contains(err.Error(), "openssh-client") {
		t.Errorf("missing under CI: %v, %v; want an error naming the package", ok, err)
	}
	if _, err := Condition("net"); err == nil {
		t.Error("unknown condition accepted")
	}
}

func TestUnavailable(t *testing.T) {
	missing := fmt.Errorf("network namespaces cannot be made here: needs root")
	for _, tc := range []struct {
		ci        string
		wantFatal bool
	}{{"", false}, {"false", false}, {"true", true}} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			Unavailable(r, missing)
			if (r.fatal != "") != tc.wantFatal || (r.skip != "") == tc.wantFatal {
				t.Fatalf("fatal %q, skip %q; want fatal: %v", r.fatal, r.skip, tc.wantFatal)
			}
			if msg := r.fatal + r.skip; !strings.Contains(msg, missing.Error()) {
				t.Errorf("message %q does not say what is missing", msg)
			}
		})
	}
}
