package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// chromiumInstallHint says how to get a browser; skips and failures quote it.
const chromiumInstallHint = "run scripts/install-chromium.sh (apt-get install chromium) or set DROVER_CHROMIUM " +
	"to a Chromium or Chrome binary"

// chromiumSkipWarning prints the skip on standard error once per test
// binary.
var chromiumSkipWarning sync.Once

// debianChromium is the browser binary of Debian's chromium package.
const debianChromium = "/usr/lib/chromium/chromium"

// chromiumNames are the commands looked for on PATH, in order.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// ChromiumPath returns the browser to drive: $DROVER_CHROMIUM if set, else
// Debian's /usr/lib/chromium/chromium, else the first of chromium,
// chromium-browser, google-chrome and google-chrome-stable on PATH.
func ChromiumPath() (string, error) {
	if p := os.Getenv("DROVER_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("DROVER_CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	// Debian's /usr/bin/chromium is a shell wrapper whose /etc/chromium.d
	// snippets break when the environment surprises them (dev-shm: "[:
	// unexpected operator" when findmnt lists /dev/shm twice, seen here).
	// ChromiumArgs passes what they would add, so run the browser itself.
	if _, err := os.Stat(debianChromium); err == nil {
		return debianChromium, nil
	}
	for _, name := range chromiumNames {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no chromium, chromium-browser or google-chrome on PATH")
}

// Chromium returns the path of a headless-capable Chromium for a browser
// test. Without one it fails the test when $CI is "true" and skips it
// otherwise, never quietly: the skip names the install script and is also
// printed on standard error, verbose or not.
func Chromium(t testing.TB) string {
	t.Helper()
	p, err := ChromiumPath()
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("this test needs a Chromium: %v; %s", err, chromiumInstallHint)
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s (CI=true: not skipping)", msg)
	}
	chromiumSkipWarning.Do(func() {
		fmt.Fprintf(stderr, "\n*** testenv: SKIPPING browser tests: %s ***\n\n", msg)
	})
	t.Skipf("SKIPPED (no chromium): %s", msg)
	return ""
}

// ChromiumArgs returns the command-line switches drover's browser tests
// (internal/browsertest, a module of its own) start Chromium with: headless, no sandbox (containers and root), no GPU,
// and nothing that talks to the network on its own (updates, sync,
// first-run pages, QUIC), with a fresh profile in userDataDir. Each is
// "--name" or "--name=value", without the program name.
func ChromiumArgs(userDataDir string) []string {
	return []string{
		"--headless",
		"--no-sandbox",
		"--disable-gpu",
		"--disable-background-networking",
		"--disable-quic",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-component-update",
		"--disable-sync",
		"--disable-extensions",
		"--disable-dev-shm-usage",
		"--hide-scrollbars",
		"--mute-audio",
		"--user-data-dir=" + userDataDir,
	}
}
