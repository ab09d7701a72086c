package atomicfile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tmpFiles lists the temporary files WriteFile left in dir.
func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for i, perm := range []os.FileMode{0o600, 0o644, 0o640} {
		data := []byte(fmt.Sprintf(`{"version": %d}`, i))
		if err := WriteFile(path, data, perm); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("after write %d: %q, %v; want %q", i, got, err, data)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != perm {
			t.Errorf("write %d: mode %v, want %v", i, st.Mode().Perm(), perm)
		}
	}
	if left := tmpFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestWriteFileSteps: the data is fsynced before the rename and the folder
// after it, in that order, and the temporary file is a hidden one beside
// the target.
func TestWriteFileSteps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "subscribers")
	var steps []string
	hook = func(step, tmp string) {
		steps = append(steps, step)
		if filepath.Dir(tmp) != dir || !strings.HasPrefix(filepath.Base(tmp), ".subscribers.") || !strings.HasSuffix(tmp, ".tmp") {
			t.Errorf("temporary file %s: want .subscribers.*.tmp in %s", tmp, dir)
		}
	}
	defer func() { hook = nil }()
	if err := WriteFile(path, []byte("lake\ninflux\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if want := []string{"write", "sync-file", "rename", "sync-dir"}; !slices.Equal(steps, want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
}

// TestWriteFileFailureKeepsOld: a rename that fails leaves the target as it
// was and no temporary file behind.
func TestWriteFileFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.json")
	// A non-empty folder where the file should be: rename(2) refuses.
	if err := os.MkdirAll(filepath.Join(path, "keep"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := WriteFile(path, []byte("new"), 0o600)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("WriteFile over a folder: %v; want an error naming %s", err, path)
	}
	if _, err := os.Stat(filepath.Join(path, "keep")); err != nil {
		t.Errorf("the folder was changed: %v", err)
	}
	if left := tmpFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left after a failure: %v", left)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Error("WriteFile into a missing folder: no error")
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("SyncDir of a missing folder: no error")
	}
	if err := SyncFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("SyncFile of a missing file: no error")
	}
}

// TestConcurrentWriters: writers racing on one file leave one of their
// contents, whole.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "clients.json")
	contents := map[string]bool{}
	var wg sync.WaitGroup
	for i := range 8 {
		data := strings.Repeat(strconv.Itoa(i), 64<<10)
		contents[data] = true
		wg.Go(func() {
			for range 10 {
				if err := WriteFile(path, []byte(data), 0o644); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, err := os.ReadFile(path)
	if err != nil || !contents[string(got)] {
		t.Fatalf("after concurrent writes: %d bytes (%v), not one writer's content", len(got), err)
	}
	if left := tmpFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// version is the content of the crash tests' file: a header naming the
// version, a payload large enough to take several writes, and a checksum
// of both, so that a torn or mixed file is recognised.
func version(n int) []byte {
	head := fmt.Sprintf("version %d\n", n)
	body := bytes.Repeat([]byte{byte(n)}, 256<<10)
	sum := sha256.Sum256(append([]byte(head), body...))
	return append(append([]byte(head), body...), sum[:]...)
}

// parseVersion returns the version of a whole file, or an error.
func parseVersion(b []byte) (int, error) {
	if len(b) < sha256.Size {
		return 0, fmt.Errorf("%d bytes: torn", len(b))
	}
	data, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(data); !bytes.Equal(got[:], sum) {
		return 0, fmt.Errorf("%d bytes: checksum mismatch (torn or mixed)", len(b))
	}
	var n int
	if _, err := fmt.Sscanf(string(data), "version %d\n", &n); err != nil {
		return 0, err
	}
	return n, nil
}

const childEnv = "DROVER_ATOMICFILE_CHILD"

// TestMain runs the crash tests' child: with DROVER_ATOMICFILE_CHILD=
// "loop PATH" it rewrites PATH with the versions after the one PATH holds
// (from 1) until killed; with
// "crash PATH STEP" it writes version 1, then kills itself with SIGKILL at
// STEP of writing version 2.
func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		f := strings.Fields(v)
		switch f[0] {
		case "loop":
			// Go on from the version the last child left.
			first := 1
			if b, err := os.ReadFile(f[1]); err == nil {
				if n, err := parseVersion(b); err == nil {
					first = n + 1
				}
			}
			for n := first; ; n++ {
				if err := WriteFile(f[1], version(n), 0o644); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
			}
		case "crash":
			if err := WriteFile(f[1], version(1), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(3)
			}
			hook = func(step, _ string) {
				if step == f[2] {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					time.Sleep(time.Minute)
				}
			}
			_ = WriteFile(f[1], version(2), 0o644)
			os.Exit(4) // the step never came
		}
		os.Exit(2)
	}
	os.Exit(m.Run())
}

func child(t *testing.T, arg string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+arg)
	cmd.Stderr = os.Stderr
	return cmd
}

// TestCrashAtEachStep: killed -9 before the rename, the file holds the old
// version; killed after it, the new one. Never anything else. A kill before
// the rename leaves a temporary file, which the next write ignores.
func TestCrashAtEachStep(t *testing.T) {
	for _, tc := range []struct {
		step string
		want int
	}{{"write", 1}, {"sync-file", 1}, {"rename", 1}, {"sync-dir", 2}} {
		t.Run(tc.step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state")
			err := child(t, "crash "+path+" "+tc.step).Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child: %v; want killed by SIGKILL at %s", err, tc.step)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			n, err := parseVersion(b)
			if err != nil || n != tc.want {
				t.Fatalf("after a kill at %s: version %d (%v), want %d", tc.step, n, err, tc.want)
			}
			if err := WriteFile(path, version(3), 0o644); err != nil {
				t.Fatalf("write after the crash: %v", err)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, version(3)) {
				t.Fatal("write after the crash did not replace the file")
			}
		})
	}
}

// TestCrashKill9Loop kills a process that rewrites a file in a loop at
// random moments: every time, the file is one version, whole.
func TestCrashKill9Loop(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	last := 0
	for round := range 8 {
		cmd := child(t, "loop "+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it at a moment that depends on the round, once it has
		// replaced the file since it started.
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, err := os.ReadFile(path)
			if err == nil {
				if n, perr := parseVersion(b); perr == nil && n > last {
					break
				}
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("round %d: the child wrote nothing new in 30s", round)
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(round) * 3 * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		n, err := parseVersion(b)
		if err != nil {
			t.Fatalf("round %d: file after kill -9: %v", round, err)
		}
		last = n
		t.Logf("round %d: killed at version %d; %d temporary files left", round, n, len(tmpFiles(t, dir)))
	}
}

// TestWriteFuncStreams: content streamed through WriteFunc lands whole
// (more than its buffer), and a writer that fails midway leaves the old
// file as it was and no temporary file.
func TestWriteFuncStreams(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache")
	if err := WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	boom := fmt.Errorf("boom")
	err := WriteFunc(path, 0o600, func(w io.Writer) error {
		for range 8 {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFunc with a failing writer: %v, want boom", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("after a failed WriteFunc the file holds %d bytes, want the old content", len(got))
	}
	if left := tmpFiles(t, dir); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if err := WriteFunc(path, 0o640, func(w io.Writer) error {
		for range 8 {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, bytes.Repeat(chunk, 8)) {
		t.Fatalf("after WriteFunc: %d bytes, %v; want %d", len(got), err, 8*len(chunk))
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
}
