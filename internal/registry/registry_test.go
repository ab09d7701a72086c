package registry

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAuthenticate(t *testing.T) {
	r, err := New([]Device{{ID: "t1", TokenSHA256: HashToken("s3cret"), Fleet: "acme"}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := r.Authenticate("t1", "s3cret"); err != nil || d.Fleet != "acme" {
		t.Fatalf("good token: %v %+v", err, d)
	}
	if _, err := r.Authenticate("t1", "wrong"); !errors.Is(err, ErrBadToken) {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := r.Authenticate("nope", "s3cret"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown: %v", err)
	}
}

func TestNewRejectsBadEntries(t *testing.T) {
	good := HashToken("x")
	for name, devs := range map[string][]Device{
		"empty id":  {{ID: "", TokenSHA256: good}},
		"space":     {{ID: "a b", TokenSHA256: good}},
		"duplicate": {{ID: "a", TokenSHA256: good}, {ID: "a", TokenSHA256: good}},
		"bad hash":  {{ID: "a", TokenSHA256: "xyz"}},
	} {
		if _, err := New(devs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestStoreReloadsOnChangeAndSIGHUP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	if err := Write(path, []Device{{ID: "a", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	// Two stores of the same file: one polls it every 10 ms, the other only
	// hears SIGHUP (its poll is an hour away), so each trigger is tested alone.
	polling, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	polling.interval = 10 * time.Millisecond
	hup, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	hup.interval = time.Hour
	// The test's own subscription: a SIGHUP that reaches the process before
	// the stores subscribe must not take the default action (exit), which
	// would end the whole test binary ("signal: hangup").
	guard := make(chan os.Signal, 4)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)
	runStore(t, polling)
	runStore(t, hup)
	reloads := func(s *Store, result string) float64 { return testutil.ToFloat64(s.reloads.WithLabelValues(result)) }

	// A changed file is picked up by polling.
	if err := Write(path, []Device{{ID: "a", TokenSHA256: HashToken("1")}, {ID: "b", TokenSHA256: HashToken("2")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := polling.Current().Lookup("b"); return ok })

	// SIGHUP reloads; until hup has subscribed, a SIGHUP may reach only the
	// guard, so send it until hup has reloaded.
	waitFor(t, func() bool {
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		_, ok := hup.Current().Lookup("b")
		return ok
	})

	// A broken file keeps the registry in force, in both stores.
	errBefore := reloads(hup, "error")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return reloads(hup, "error") > errBefore && reloads(polling, "error") > 0 })
	for name, s := range map[string]*Store{"polling": polling, "hup": hup} {
		if _, ok := s.Current().Lookup("b"); !ok {
			t.Errorf("%s: the broken file replaced the registry", name)
		}
	}
	// A reload of the broken file never counts as ok. Counted from here:
	// a SIGHUP of the loop above may have been handled after the snapshot
	// of the counters, reading the good file; from here on, every reload
	// reads the broken one.
	okBefore, errNow := reloads(hup, "ok"), reloads(hup, "error")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return reloads(hup, "error") > errNow })
	if got := reloads(hup, "ok"); got != okBefore {
		t.Errorf("hup store: %v ok reloads after the broken file, want %v", got, okBefore)
	}

	// SIGHUP picks up the fixed file.
	if err := Write(path, []Device{{ID: "c", TokenSHA256: HashToken("3")}}); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { _, ok := hup.Current().Lookup("c"); return ok })
}

// runStore runs s until the test ends.
func runStore(t *testing.T, s *Store) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStoreSeesFileRenamedOver: a new file renamed over the registry (an
// atomic writer, a Kubernetes ConfigMap update) is picked up even with the
// same size and modification time as the one it replaces.
func TestStoreSeesFileRenamedOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	if err := Write(path, []Device{{ID: "b", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.interval = 10 * time.Millisecond
	old, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	next := filepath.Join(dir, "devices.json.new")
	if err := Write(next, []Device{{ID: "c", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(next, old.ModTime(), old.ModTime()); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(next); err != nil || st.Size() != old.Size() || !st.ModTime().Equal(old.ModTime()) {
		t.Fatalf("the replacement differs in size or time (%v, %v): the test needs them equal", st, err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	runStore(t, s)
	waitFor(t, func() bool { _, ok := s.Current().Lookup("c"); return ok })
}
