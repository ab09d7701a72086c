package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// drover is the binary under test, built once by TestMain.
var drover string

const (
	testVersion = "v9.9.9-test"
	testCommit  = "abc1234"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drover-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	drover = filepath.Join(dir, "drover")
	build := exec.Command("go", "build",
		"-ldflags", "-X main.version="+testVersion+" -X main.commit="+testCommit,
		"-o", drover, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build drover: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// runDrover runs the binary with args and env added to the test's own
// environment, and waits at most a minute.
func runDrover(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), drover, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = time.Minute
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run drover %q: %v", args, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

var allCommands = []string{"frontend", "router", "storage-writer", "livefeed", "all", "sim", "api", "ctl", "version"}

func TestHelpListsCommands(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "help"} {
		r := runDrover(t, nil, arg)
		if r.code != 0 {
			t.Fatalf("drover %s: exit %d, want 0; stderr:\n%s", arg, r.code, r.stderr)
		}
		for _, c := range allCommands {
			// Each command on its own line with a one-line summary.
			found := false
			for line := range strings.SplitSeq(r.stdout, "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[0] == c {
					found = true
				}
			}
			if !found {
				t.Errorf("drover %s: no line for %q with a summary:\n%s", arg, c, r.stdout)
			}
		}
	}
}

func TestNoCommandIsUsageError(t *testing.T) {
	r := runDrover(t, nil)
	if r.code != 2 || !strings.Contains(r.stderr, "Usage: drover <command>") || r.stdout != "" {
		t.Errorf("drover: exit %d, stdout %q, stderr %q; want 2 and usage on stderr", r.code, r.stdout, r.stderr)
	}
}

func TestUnknownCommand(t *testing.T) {
	r := runDrover(t, nil, "frontned")
	if r.code != 2 {
		t.Errorf("exit %d, want 2", r.code)
	}
	if !strings.Contains(r.stderr, `unknown command "frontned"`) || !strings.Contains(r.stderr, "Usage: drover <command>") {
		t.Errorf("stderr lacks the error and the usage:\n%s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("stdout not empty: %q", r.stdout)
	}
}

func TestCommandHelpShowsFlagsAndEnv(t *testing.T) {
	common := []string{"ops-listen", "pprof", "ops-token-file", "log-level", "log-format", "shutdown-timeout"}
	for cmd, own := range map[string][]string{
		"frontend":       {"listen", "queue-dir", "routers", "id", "cluster-key-file", "insecure-links"},
		"router":         {"listen", "live-pub", "store-listen", "queue-dir", "id", "cluster-key-file", "insecure-links", "live-buffer-bytes"},
		"storage-writer": {"routers", "sink", "queue-dir", "name", "dead-letter-max-bytes", "dead-letter-file-age", "cluster-key-file", "insecure-links"},
		"livefeed":       {"listen", "routers", "cluster-key-file", "insecure-links"},
		"all":            {"data", "sinks", "simulate", "frontend.listen", "router.store-listen", "livefeed.listen", "storage-writer.influx-measurement", "storage-writer.lake-compact-interval", "status-interval", "api.listen"},
		"sim":            {"frontends", "devices", "rate", "write-registry"},
		"api":            {"listen", "data-dir", "db", "postgres-url-file", "tls-cert", "tls-key", "cors-origins"},
	} {
		r := runDrover(t, nil, cmd, "-h")
		if r.code != 0 {
			t.Errorf("drover %s -h: exit %d, want 0; stderr:\n%s", cmd, r.code, r.stderr)
			continue
		}
		for _, name := range append(own, common...) {
			// e.g. DROVER_STORAGE_WRITER_QUEUE_DIR, DROVER_ALL_FRONTEND_LISTEN
			env := strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper("drover_" + cmd + "_" + name))
			if !strings.Contains(r.stdout, "  -"+name+" ") && !strings.Contains(r.stdout, "  -"+name+"\n") { // a bool flag has no argument
				t.Errorf("drover %s -h lacks flag -%s:\n%s", cmd, name, r.stdout)
			}
			if !strings.Contains(r.stdout, "[$"+env+"]") {
				t.Errorf("drover %s -h lacks $%s:\n%s", cmd, env, r.stdout)
			}
		}
	}
}

func TestEnvAndFlagPrecedence(t *testing.T) {
	// An invalid value from the environment is rejected, naming the flag's
	// config field; the same value given by flag wins over a valid env.
	r := runDrover(t, []string{"DROVER_ROUTER_LIVE_PUB=tcp://127.0.0.1:5557"}, "router")
	if r.code != 2 || !strings.Contains(r.stderr, "live-pub") {
		t.Errorf("live lane on the store lane's endpoint from env: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	r = runDrover(t, []string{"DROVER_ROUTER_LIVE_PUB=tcp://127.0.0.1:6000"}, "router", "-live-pub", "tcp://127.0.0.1:5557")
	if r.code != 2 || !strings.Contains(r.stderr, "live-pub") {
		t.Errorf("flag must win over env: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func TestBadEnvValueNamesVariable(t *testing.T) {
	r := runDrover(t, []string{"DROVER_FRONTEND_SHUTDOWN_TIMEOUT=soon"}, "frontend")
	if r.code != 2 || !strings.Contains(r.stderr, "DROVER_FRONTEND_SHUTDOWN_TIMEOUT") {
		t.Errorf("exit %d, stderr %q; want 2 naming the variable", r.code, r.stderr)
	}
}

func TestBadFlagsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"frontend", "-no-such-flag"},
		{"frontend", "stray"},
		{"frontend", "-routers", ""},
		{"storage-writer", "-sink", "postgres"},
		{"livefeed", "-log-level", "loud"},
		{"router", "-ops-listen", "9181"},
		{"all", "-router.listen", "tcp://*:0"},
		{"api", "-db", "mysql"},
		{"api", "-tls-cert", "c.pem"},
		{"ctl", "frobnicate"},
		{"ctl", "add"},
		{"version", "extra"},
	} {
		r := runDrover(t, nil, args...)
		if r.code != 2 || r.stderr == "" {
			t.Errorf("drover %q: exit %d, stderr %q; want 2 and a reason", args, r.code, r.stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	r := runDrover(t, nil, "version")
	if r.code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"drover " + testVersion, "commit: " + testCommit, "go: " + runtime.Version()} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("drover version lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestSplitTargetsNeedLinks: a component started on its own refuses to
// run with neither a cluster key file nor -insecure-links (exit 2, saying
// how to make a key), and drover all, which makes its own key, offers
// neither flag.
func TestSplitTargetsNeedLinks(t *testing.T) {
	for _, target := range []string{"frontend", "router", "storage-writer", "livefeed"} {
		r := runDrover(t, nil, target)
		if r.code != 2 || !strings.Contains(r.stderr, "cluster-key-file: required") || !strings.Contains(r.stderr, "head -c 32 /dev/urandom | base64") {
			t.Errorf("drover %s without links: exit %d, stderr:\n%s", target, r.code, r.stderr)
		}
	}
	r := runDrover(t, nil, "router", "-cluster-key-file", filepath.Join(t.TempDir(), "missing.key"))
	if r.code != 2 || !strings.Contains(r.stderr, "missing.key") {
		t.Errorf("drover router with a missing key file: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	r = runDrover(t, nil, "all", "-h")
	for line := range strings.SplitSeq(r.stdout, "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue // flag lines only: the help text says why there is none
		}
		for _, flag := range []string{"cluster-key-file", "insecure-links", "fixed-subscribers"} {
			if strings.Contains(line, flag) {
				t.Errorf("drover all -h offers %s: %s", flag, line)
			}
		}
	}
}
