package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at build time (-ldflags "-X main.version=1.2.3"); a build
// without it reports the module version Go recorded, or "devel".
var version string

func printVersion(w io.Writer) {
	v, rev := version, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " " + s.Value[:12]
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	bi, _ := debug.ReadBuildInfo()
	goVersion := "unknown Go"
	if bi != nil {
		goVersion = bi.GoVersion
	}
	fmt.Fprintf(w, "felhom-agent %s (%s%s)\n", v, goVersion, rev)
}
