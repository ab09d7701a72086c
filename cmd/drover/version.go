package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set at link time: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc1234".
// When empty, the module version and VCS revision recorded in the binary are
// used, if any.
var (
	version string
	commit  string
)

// buildInfo is what a binary knows of its own build.
type buildInfo struct {
	Version, Commit, GoVersion string
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		b.GoVersion = info.GoVersion
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		if b.Commit == "" {
			var rev, dirty string
			for _, s := range info.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						dirty = "-dirty"
					}
				}
			}
			if rev != "" {
				b.Commit = rev + dirty
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func runVersion(_ string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, "Usage: drover version\n\nPrints the version, the commit and the Go version drover was built with.\n")
		return 0
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "drover version: takes no arguments, got %q\n", args)
		return 2
	}
	b := readBuildInfo()
	fmt.Fprintf(stdout, "drover %s\ncommit: %s\ngo: %s\n", b.Version, b.Commit, b.GoVersion)
	return 0
}
