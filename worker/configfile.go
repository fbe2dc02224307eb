package worker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// FieldError is one problem of the configuration: the setting and the
// reason. LoadConfig and Validate return every FieldError they find, joined.
type FieldError struct {
	// Field names the setting as the user wrote it: its YAML path
	// (proxmox.timeout), preceded by the file and line when the file's value
	// is wrong (agent.yaml:12: proxmox.timeout), or the environment variable
	// (FELHOM_PROXMOX_TIMEOUT) when the environment's is.
	Field  string
	Reason string
	// path is the YAML path alone: a setting whose value could not be read
	// is not reported again by Validate.
	path string
}

func (e *FieldError) Error() string { return "config: " + e.Field + ": " + e.Reason }

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// MaxConfigSize bounds a configuration file. A real one is a few KiB; the
// bound keeps a wrong path (a disk image, /dev/zero) from filling memory.
const MaxConfigSize = 1 << 20

// readConfigFile reads path, refusing a file larger than MaxConfigSize.
func readConfigFile(r io.Reader, path string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d KiB: is it the configuration file?", path, MaxConfigSize>>10)
	}
	return data, nil
}

// decodeYAML lays the YAML document data over cfg, setting by setting, and
// returns every problem it finds, each a *FieldError naming the file, the
// line and the YAML path: an unknown key, a key given twice, a value of the
// wrong type. The settings it could read are set even when others could
// not, so that Validate can check them in the same run. A document that is
// not YAML at all is one error; an empty one sets nothing.
func decodeYAML(data []byte, file string, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("config %s: not valid YAML: %w", file, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: holds more than one YAML document: keep one", file)
	}
	d := yamlDecoder{file: file}
	d.decode(&doc, reflect.ValueOf(cfg).Elem(), "")
	return errors.Join(d.errs...)
}

type yamlDecoder struct {
	file string
	errs []error
	// depth bounds the aliases followed, against a document whose
	// aliases refer to themselves.
	depth int
}

func (d *yamlDecoder) bad(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{
		Field:  fmt.Sprintf("%s:%d: %s", d.file, n.Line, displayPath(path)),
		Reason: fmt.Sprintf(format, args...),
		path:   path,
	})
}

func displayPath(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

// decode sets v, a struct or a setting, from n.
func (d *yamlDecoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		if d.depth > 16 || n.Alias == nil {
			d.bad(n, path, "alias *%s nests too deep", n.Value)
			return
		}
		d.depth++
		defer func() { d.depth-- }()
		d.decode(n.Alias, v, path)
		return
	}
	if v.Kind() == reflect.Struct && v.Type() != reflect.TypeFor[time.Duration]() {
		d.decodeStruct(n, v, path)
		return
	}
	d.decodeSetting(n, v, path)
}

func (d *yamlDecoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		return // "temporal:" with nothing under it: the defaults stay
	case n.Kind != yaml.MappingNode:
		d.bad(n, path, "must be a mapping of settings, not %s", nodeWhat(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		sub := key
		if !plainKey.MatchString(key) {
			sub = strconv.Quote(key) // shown, not trusted: a newline would split the report
		}
		if path != "" {
			sub = path + "." + sub
		}
		if k.Kind != yaml.ScalarNode {
			d.bad(k, path, "a key must be a name, not %s", nodeWhat(k))
			continue
		}
		if line, dup := seen[key]; dup {
			d.bad(k, sub, "given twice (first on line %d): keep one", line)
			continue
		}
		seen[key] = k.Line
		f, ok := fieldByTag(v, key)
		if !ok {
			d.bad(k, sub, "not a known setting (see felhom-agent run --help)")
			continue
		}
		d.decode(val, f, sub)
	}
}

// decodeSetting sets one setting from n, leaving it as it was when n is not
// a value of its type.
func (d *yamlDecoder) decodeSetting(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.MappingNode || (n.Kind == yaml.SequenceNode && v.Kind() != reflect.Slice) {
		d.bad(n, path, "must be %s, not %s", typeWhat(v.Type()), nodeWhat(n))
		return
	}
	tmp := reflect.New(v.Type())
	if err := n.Decode(tmp.Interface()); err != nil {
		if n.Kind == yaml.ScalarNode {
			d.bad(n, path, "%q is not %s", n.Value, typeWhat(v.Type()))
		} else {
			d.bad(n, path, "must be %s", typeWhat(v.Type()))
		}
		return
	}
	v.Set(tmp.Elem())
}

// fieldByTag is the field of struct v whose yaml tag is key.
func fieldByTag(v reflect.Value, key string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("yaml"); tag == key && tag != "-" {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// typeWhat says what a value of t is, for the user.
func typeWhat(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration with a unit (30s, 5m, 1h30m)"
	case t.Kind() == reflect.Int:
		return "a whole number"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.String:
		return "a single value"
	case t.Kind() == reflect.Slice:
		return "a list of single values"
	}
	return "a " + strings.ToLower(t.Kind().String())
}

// nodeWhat says what n is, for the user.
func nodeWhat(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}
