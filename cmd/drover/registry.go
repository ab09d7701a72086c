package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/drover-telemetry/drover/internal/registry"
)

// registrySummary is drover registry's line in drover -h.
const registrySummary = "add a device to a registry file (its token printed once), or check a registry file"

// registryHelp is drover registry -h. Kept small on purpose: the control
// plane (drover api) is to take over the registry; until then the file is
// edited by hand or with these two commands.
const registryHelp = `Usage: drover registry <command> [flags]

The device registry is a JSON file (docs/registry.md) that frontends and
routers read with -registry and reload when it changes. These commands edit
and check it; run 'drover registry <command> -h' for their flags.

Commands:
  add    add a device with a new random token, and print the token once
  check  list every entry the frontends would refuse, and why (exit 1 if any)

Only one editor at a time: two 'add' runs at the same moment can lose one
of the two devices.
`

// runRegistry is drover registry: add or check.
func runRegistry(_ string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, registryHelp)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, registryHelp)
		return 0
	case "add":
		return registryAdd(args[1:], stdout, stderr)
	case "check":
		return registryCheck(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "drover registry: unknown command %q\n\n%s", args[0], registryHelp)
	return 2
}

// registryAdd adds one device with a fresh token: 32 random bytes in hex.
// The file keeps only the token's SHA-256, so the token is printed once, on
// standard output alone (token=$(drover registry add ...)), and never put on
// a command line or in a log.
func registryAdd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drover registry add", flag.ContinueOnError)
	var path string
	var d registry.Device
	fs.StringVar(&path, "file", "", "the registry `file` (created if missing); required")
	fs.StringVar(&d.ID, "id", "", "the device `id`: 1-128 of A-Z a-z 0-9 . _ - :, starting with a letter or a digit; required")
	fs.StringVar(&d.Fleet, "fleet", "", "the device's `fleet` (up to 128 bytes, no control characters or backslashes)")
	fs.StringVar(&d.Class, "class", "", "the vehicle `class` (same rules as -fleet)")
	fs.StringVar(&d.Region, "region", "", "the `region` (same rules as -fleet)")
	const help = `Adds the device to the file with a new random token (32 bytes, hex) and prints
the token on standard output, once: give it to the device; the file keeps only
its SHA-256. Running frontends and routers pick the change up by themselves.`
	if code, ok := parseFlags(fs, "registry add", "add a device to a registry file", help, args, stdout, stderr); !ok {
		return code
	}
	if path == "" || d.ID == "" {
		fmt.Fprintln(stderr, "drover registry add: -file and -id are required")
		return 2
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		fmt.Fprintf(stderr, "drover registry add: random token: %v\n", err)
		return 1
	}
	token := hex.EncodeToString(raw[:])
	d.TokenSHA256 = registry.HashToken(token)
	if err := registry.Validate(d); err != nil {
		fmt.Fprintf(stderr, "drover registry add: device %q: %v\n", d.ID, err)
		return 2
	}
	devs, err := registry.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "drover registry add: %v\n", err)
		return 1
	}
	for _, e := range devs {
		if e.ID == d.ID {
			fmt.Fprintf(stderr, "drover registry add: device %q is already in %s: remove its entry first to give it a new token\n", d.ID, path)
			return 1
		}
	}
	devs = append(devs, d)
	if err := registry.Write(path, devs); err != nil {
		fmt.Fprintf(stderr, "drover registry add: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "drover registry add: device %q added to %s (%d entries); its token is on standard output, shown this once\n",
		d.ID, path, len(devs))
	fmt.Fprintln(stdout, token)
	return 0
}

// registryCheck loads a registry file as frontends and routers do and
// lists what they would refuse.
func registryCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drover registry check", flag.ContinueOnError)
	var path string
	fs.StringVar(&path, "file", "", "the registry `file`; required")
	const help = `Loads the file as frontends and routers do and prints each entry they would
refuse (its position from 0, its id, and the rule it breaks). Exit status 0: every
entry is served; 1: some entry is refused, or the file does not load.`
	if code, ok := parseFlags(fs, "registry check", "check a registry file", help, args, stdout, stderr); !ok {
		return code
	}
	if path == "" {
		fmt.Fprintln(stderr, "drover registry check: -file is required")
		return 2
	}
	r, err := registry.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "drover registry check: %v\n", err)
		return 1
	}
	for _, rj := range r.Rejected() {
		fmt.Fprintln(stdout, rj)
	}
	fmt.Fprintf(stdout, "%s: %d devices served, %d entries refused\n", path, r.Len(), len(r.Rejected()))
	if len(r.Rejected()) > 0 {
		return 1
	}
	return 0
}
