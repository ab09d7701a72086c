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
	s, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.interval = 10 * time.Millisecond
	// The test's own subscription: a SIGHUP that reaches the process before
	// or after the store's subscription must not take the default action
	// (exit), which would end the whole test binary ("signal: hangup").
	guard := make(chan os.Signal, 4)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()

	if err := Write(path, []Device{{ID: "a", TokenSHA256: HashToken("1")}, {ID: "b", TokenSHA256: HashToken("2")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := s.Current().Lookup("b"); return ok })

	// A broken file keeps the previous registry.
	os.WriteFile(path, []byte("{not json"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return true })
	if _, ok := s.Current().Lookup("b"); !ok {
		t.Fatal("broken file replaced the registry")
	}
	// SIGHUP picks up a fixed file even if mtime and size look unchanged.
	Write(path, []Device{{ID: "c", TokenSHA256: HashToken("3")}})
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { _, ok := s.Current().Lookup("c"); return ok })
	cancel()
	<-done
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
