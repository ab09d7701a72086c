package daemon

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests signal their own process. SignalContext has registered for
// SIGINT and SIGTERM before they are sent, so the test binary survives them.

func stubExit(t *testing.T) <-chan int {
	t.Helper()
	codes := make(chan int, 1)
	exit = func(code int) { codes <- code }
	t.Cleanup(func() { exit = defaultExit })
	return codes
}

var defaultExit = exit

func TestSignalContextFirstSignalCancelsSecondExits(t *testing.T) {
	codes := stubExit(t)
	ctx, stop := SignalContext(context.Background(), nil)
	defer stop()

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	recv(t, ctx.Done(), 5*time.Second, "the context to end after SIGTERM")
	if cause := context.Cause(ctx); cause == nil || !strings.Contains(cause.Error(), "terminated") {
		t.Errorf("cause = %v, want it to name the signal", cause)
	}
	select {
	case code := <-codes:
		t.Fatalf("exited with %d after the first signal", code)
	default:
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := recv(t, codes, 5*time.Second, "exit after the second signal"); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

func TestSignalContextStop(t *testing.T) {
	codes := stubExit(t)
	ctx, stop := SignalContext(context.Background(), nil)
	stop()
	stop() // safe twice
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("ctx.Err() after stop = %v, want Canceled", ctx.Err())
	}
	select {
	case code := <-codes:
		t.Errorf("stop exited with %d", code)
	default:
	}
}

func TestSignalContextParentCancel(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	ctx, stop := SignalContext(parent, nil)
	defer stop()
	cancel()
	recv(t, ctx.Done(), 5*time.Second, "the context to follow its parent")
}

// TestSignalContextSIGHUPNotFatal: a SIGHUP that arrives before any component
// subscribes to it (while a frontend still opens its queue) neither ends the
// process (the test binary would die with "signal: hangup") nor stops it.
func TestSignalContextSIGHUPNotFatal(t *testing.T) {
	codes := stubExit(t)
	ctx, stop := SignalContext(context.Background(), nil)
	defer stop()
	for range 3 {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	// A SIGTERM sent after them is handled, so they were delivered first.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	recv(t, ctx.Done(), 5*time.Second, "the context to end after SIGTERM")
	if cause := context.Cause(ctx); cause == nil || !strings.Contains(cause.Error(), "terminated") {
		t.Errorf("cause = %v, want SIGTERM's: SIGHUP must not stop the process", cause)
	}
	select {
	case code := <-codes:
		t.Fatalf("exited with %d", code)
	default:
	}
}
