package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder notes the order in which members stop.
type recorder struct {
	mu      sync.Mutex
	stopped []string
}

func (r *recorder) add(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = append(r.stopped, name)
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.stopped...)
}

// waitMember runs until its context ends, then records itself, and returns
// ctx.Err(), as a well-behaved component does.
func waitMember(r *recorder, name string, started *sync.WaitGroup) func(context.Context) error {
	started.Add(1)
	return func(ctx context.Context) error {
		started.Done()
		<-ctx.Done()
		r.add(name)
		return ctx.Err()
	}
}

func TestGroupStopsInReverseOrderOnCancel(t *testing.T) {
	var logs bytes.Buffer
	g := Group{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	var r recorder
	var started sync.WaitGroup
	for _, name := range []string{"ops", "queue", "router", "frontend"} {
		g.Add(name, waitMember(&r, name, &started))
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- g.Run(ctx) }()
	started.Wait()
	cancel()
	if err := recv(t, errc, 5*time.Second, "Run to return"); err != nil {
		t.Fatalf("Run after a clean stop = %v, want nil", err)
	}
	want := []string{"frontend", "router", "queue", "ops"}
	if got := r.list(); !equal(got, want) {
		t.Errorf("stop order %q, want %q", got, want)
	}
	for _, name := range want {
		if !strings.Contains(logs.String(), `msg="component stopped" component=`+name+" took=") {
			t.Errorf("log lacks the stop duration of %s:\n%s", name, logs.String())
		}
	}
}

func TestGroupWaitsForEachBeforeCancellingNext(t *testing.T) {
	var g Group
	firstCtx := make(chan context.Context, 1)
	lastReturned := make(chan struct{})
	violations := make(chan string, 2)
	g.Add("first", func(ctx context.Context) error {
		firstCtx <- ctx
		<-ctx.Done()
		select {
		case <-lastReturned:
		default:
			violations <- "first was cancelled before last had returned"
		}
		return nil
	})
	g.Add("last", func(ctx context.Context) error {
		fctx := <-firstCtx
		<-ctx.Done()
		// A slow drain: the group must wait for it before touching first.
		time.Sleep(20 * time.Millisecond)
		if fctx.Err() != nil {
			violations <- "first was cancelled while last was still draining"
		}
		close(lastReturned)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.Run(ctx); err != nil {
		t.Fatal(err)
	}
	close(violations)
	for v := range violations {
		t.Error(v)
	}
}

func TestGroupComponentErrorStopsOthers(t *testing.T) {
	var g Group
	var r recorder
	var started sync.WaitGroup
	boom := errors.New("bind: address in use")
	g.Add("ops", waitMember(&r, "ops", &started))
	g.Add("router", func(ctx context.Context) error {
		started.Wait()
		return fmt.Errorf("listen: %w", boom)
	})
	g.Add("frontend", waitMember(&r, "frontend", &started))
	err := g.Run(context.Background())
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "router: ") {
		t.Errorf("Run = %v, want the router's error, named", err)
	}
	if got, want := r.list(), []string{"frontend", "ops"}; !equal(got, want) {
		t.Errorf("stop order %q, want %q", got, want)
	}
}

func TestGroupEarlyNilReturnStopsGroup(t *testing.T) {
	var g Group
	var r recorder
	var started sync.WaitGroup
	g.Add("ops", waitMember(&r, "ops", &started))
	g.Add("oneshot", func(context.Context) error { return nil })
	if err := g.Run(context.Background()); err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if got := r.list(); !equal(got, []string{"ops"}) {
		t.Errorf("stopped %q, want [ops]", got)
	}
}

func TestGroupErrorDuringStopIsReturned(t *testing.T) {
	var g Group
	flush := errors.New("flush failed")
	g.Add("ops", func(ctx context.Context) error { <-ctx.Done(); return nil })
	g.Add("writer", func(ctx context.Context) error { <-ctx.Done(); return flush })
	g.Add("frontend", func(ctx context.Context) error { <-ctx.Done(); return fmt.Errorf("serve: %w", ctx.Err()) })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.Run(ctx)
	if !errors.Is(err, flush) || !strings.Contains(err.Error(), "writer") {
		t.Errorf("Run = %v, want the writer's stop error (a wrapped context.Canceled is clean)", err)
	}
}

func TestGroupShutdownDeadline(t *testing.T) {
	var logs bytes.Buffer
	g := Group{ShutdownTimeout: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var r recorder
	var started sync.WaitGroup
	g.Add("ops", waitMember(&r, "ops", &started))
	g.Add("stuck", func(context.Context) error { <-release; return nil })
	g.Add("frontend", waitMember(&r, "frontend", &started))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() { errc <- g.Run(ctx) }()
	started.Wait()
	cancel()
	err := recv(t, errc, 5*time.Second, "Run to give up at its deadline")
	if took := time.Since(t0); took < 100*time.Millisecond {
		t.Errorf("Run returned after %s, before its 100ms deadline", took)
	}
	if err == nil || !strings.Contains(err.Error(), "still running: ops, stuck") {
		t.Errorf("Run = %v, want a deadline error naming ops and stuck", err)
	}
	if !strings.Contains(logs.String(), "shutdown deadline passed") {
		t.Errorf("deadline not logged:\n%s", logs.String())
	}
	// The members behind the stuck one were cancelled too, at the deadline.
	waitFor(t, 5*time.Second, "ops to be cancelled after the deadline", func() bool {
		return equal(r.list(), []string{"frontend", "ops"})
	})
}

func TestGroupEmpty(t *testing.T) {
	var g Group
	if err := g.Run(context.Background()); err != nil {
		t.Errorf("empty group Run = %v", err)
	}
}

func equal(a, b []string) bool {
	return strings.Join(a, "|") == strings.Join(b, "|")
}

func TestGroupErrorNamedOnce(t *testing.T) {
	var g Group
	g.Add("router", func(context.Context) error { return errors.New("router: not yet built") })
	if err := g.Run(context.Background()); err == nil || err.Error() != "router: not yet built" {
		t.Errorf("Run = %v, want the error with its name once", err)
	}
}
