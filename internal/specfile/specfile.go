// Package specfile reads desired-state files, as felhomctl plan and apply
// take them: YAML documents, each one guest's desired.Spec or a list of them
// under "guests:", in a file or in the *.yaml and *.yml files of a
// directory. It reports every problem of every file at once, each naming
// the file, the document or guest, and the field: YAML that does not
// decode (an unknown key, a value of the wrong type), a spec beyond
// desired.Limits or refused by desired.Normalise, an option Proxmox's schema
// refuses, a guest given twice. A file is at most MaxFileSize.
package specfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/felhom/felhom-agent/internal/pveschema"
	"github.com/felhom/felhom-agent/workflows"
	"github.com/felhom/felhom-agent/workflows/desired"
)

// Guest is one spec as read from a file, with where it came from.
type Guest struct {
	Source string // "file.yaml" or "file.yaml, document 2, guests[1]"
	Spec   desired.Spec
	// Normalised is Spec as desired.Normalise returns it: what plans use.
	Normalised desired.Spec
}

// WorkflowID is the ID of the guest's workflow.
func (g Guest) WorkflowID() string { return workflows.GuestWorkflowID(g.Spec.Host, g.Spec.VMID) }

// specDocument is either one spec or a guests: list.
type specDocument struct {
	Guests       []desired.Spec `yaml:"guests"`
	desired.Spec `yaml:",inline"`
}

// Load reads path (a file or a directory) and validates every spec with
// desired.Limits, desired.Normalise and Proxmox's schema of the options.
// Every problem is reported, each naming the file, the guest and the
// field.
func Load(path string) ([]Guest, error) {
	files, err := files(path)
	if err != nil {
		return nil, err
	}
	var (
		specs    []Guest
		problems []string
	)
	for _, file := range files {
		got, bad, err := readFile(file)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		specs, problems = append(specs, got...), append(problems, bad...)
	}
	specs, err = Check(specs, problems)
	if err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("%s holds no guest", path)
	}
	return specs, nil
}

// Check normalises every spec, checks it against the limits and its
// options against Proxmox's schema, and refuses a guest given twice; any
// problem, its own or one of problems, refuses them all.
func Check(specs []Guest, problems []string) ([]Guest, error) {
	seen := map[string]string{}
	for i := range specs {
		g := &specs[i]
		norm, err := desired.Normalise(g.Spec)
		if err = errors.Join(desired.Limits(g.Spec), err); err != nil {
			// One line for each joined problem.
			for _, e := range strings.Split(err.Error(), "\n") {
				problems = append(problems, fmt.Sprintf("%s: guest %s: %s", g.Source, guestName(g.Spec), e))
			}
			continue
		}
		g.Normalised = norm
		for _, p := range optionProblems(norm) {
			problems = append(problems, fmt.Sprintf("%s: guest %s: %s", g.Source, guestName(g.Spec), p))
		}
		id := g.WorkflowID()
		if first, dup := seen[id]; dup {
			problems = append(problems, fmt.Sprintf("%s: guest %s: already given in %s", g.Source, guestName(g.Spec), first))
			continue
		}
		seen[id] = g.Source
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("invalid desired state, nothing was sent:\n  %s", strings.Join(problems, "\n  "))
	}
	return specs, nil
}

func files(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, filepath.Join(path, e.Name()))
		}
	}
	slices.Sort(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("%s holds no *.yaml or *.yml file", path)
	}
	return files, nil
}

// MaxFileSize bounds one desired-state file: far more than a fleet's
// worth of guests, and it keeps a wrong path from filling memory.
const MaxFileSize = 16 << 20

// readFile reads the specs of file, and the problems of its documents
// that could not be read; err is a file that could not be read at all.
func readFile(file string) (specs []Guest, problems []string, err error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > MaxFileSize {
		return nil, nil, fmt.Errorf("%s: larger than %d MiB: split it, or is it a desired-state file?", file, MaxFileSize>>20)
	}
	specs, problems = Decode(data, file)
	return specs, problems, nil
}

// Decode reads the YAML documents of data, the content of file: the
// specs of the documents it could read, and a problem for each of the
// others. A document with a value of the wrong type or an unknown key does
// not stop the next one; text that is not YAML does.
func Decode(data []byte, file string) (out []Guest, problems []string) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	for n := 1; ; n++ {
		var doc specDocument
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		source := file
		if n > 1 || bytes.Contains(data, []byte("\n---")) {
			source = fmt.Sprintf("%s, document %d", file, n)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %s", source, yamlErrorText(err)))
			if errors.As(err, new(*yaml.TypeError)) {
				continue
			}
			break
		}
		single := !reflect.ValueOf(doc.Spec).IsZero()
		switch {
		case single && doc.Guests != nil:
			problems = append(problems, fmt.Sprintf("%s: a document is one guest or a guests: list, not both", source))
		case single:
			out = append(out, Guest{Source: source, Spec: doc.Spec})
		default:
			for i, s := range doc.Guests {
				out = append(out, Guest{Source: fmt.Sprintf("%s, guests[%d]", source, i), Spec: s})
			}
		}
	}
	return out, problems
}

func guestName(s desired.Spec) string {
	host := s.Host
	switch {
	case host == "":
		host = "?"
	case strings.ContainsFunc(host, func(r rune) bool { return r < ' ' || r == '/' }):
		host = strconv.Quote(host) // shown, not trusted
	}
	return fmt.Sprintf("%s/%d", host, s.VMID)
}

// yamlErrorText is a decoding error without the Go type names it mentions.
func yamlErrorText(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err.Error()
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		if j := strings.Index(m, " in type "); j >= 0 {
			m = m[:j]
		}
		m = strings.ReplaceAll(m, "specfile.specDocument", "a guest or a guests: list")
		m = strings.ReplaceAll(m, "\n", `\n`) // a key's newline would split the report
		msgs[i] = m
	}
	return strings.Join(msgs, "; ")
}

// optionProblems are the spec's options that Proxmox's schema would refuse
// ("options.net0: invalid format - ..."), each naming the option.
func optionProblems(s desired.Spec) []string {
	if s.State == desired.Absent || len(s.Options) == 0 {
		return nil
	}
	var out []string
	for _, p := range pveschema.Problems(pveschema.CheckAll(string(s.Kind), s.Options)) {
		out = append(out, "options."+strings.ReplaceAll(p, "\n", "; "))
	}
	return out
}
