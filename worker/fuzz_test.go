package worker

import (
	"strings"
	"testing"
)

// FuzzLoadConfig feeds arbitrary files and environments to the loader:
// it never panics, and every problem it reports names a setting and a
// reason (or says the file is not YAML at all).
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte(validYAML), "")
	f.Add([]byte(validYAML+"max_concurrent_activities: many\ncolour: blue\n"), "FELHOM_HOST_ID=PVE 1")
	f.Add([]byte("temporal: {tls: [1, 2], address: {a: b}}\nsigners: &a {operational: *a}\n"), "FELHOM_PROXMOX_TIMEOUT=soon\nFELHOM_X=1")
	f.Add([]byte("a: &x [*x]\n"), "FELHOM_SIGNERS_RECOVERY=a\nFELHOM_LOG_LEVEL")
	f.Add([]byte("- 1\n- 2\n"), "")
	f.Add([]byte("host_id: pve1\nhost_id: pve2\n---\n"), "")
	f.Add([]byte("proxmox:\n  timeout: !!binary aGVsbG8=\n  max_concurrent_requests: 1e400\n"), "")
	f.Fuzz(func(t *testing.T, data []byte, env string) {
		cfg := Defaults()
		loadErr := decodeYAML(data, "agent.yaml", &cfg)
		var environ []string
		for line := range strings.SplitSeq(env, "\n") {
			environ = append(environ, EnvPrefix+strings.TrimPrefix(line, EnvPrefix))
		}
		if err := cfg.ApplyEnv(environ); err != nil {
			loadErr = JoinProblems(loadErr, err)
		}
		err := JoinProblems(loadErr, cfg.Validate())
		for _, e := range flattenErrors(err) {
			fe, ok := e.(*FieldError)
			if !ok {
				if !strings.HasPrefix(e.Error(), "config agent.yaml: ") {
					t.Errorf("problem %q names no setting", e)
				}
				continue
			}
			if fe.Field == "" || fe.Reason == "" {
				t.Errorf("problem %#v lacks its setting or reason", fe)
			}
			if strings.Contains(fe.Field, "\n") {
				t.Errorf("the setting of problem %q holds a newline", fe)
			}
		}
	})
}
