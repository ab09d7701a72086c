package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// DefaultShutdownTimeout is the shutdown deadline of a [Group] whose
// ShutdownTimeout is zero.
const DefaultShutdownTimeout = 30 * time.Second

// Group runs a process's components together and stops them together. It is
// oklog/run's idea with contexts: each component is one function that runs
// until its context ends.
//
// [Group.Run] starts every component; when its context ends or any component
// returns, it stops the rest in reverse order of [Group.Add] (cancel the
// last-added, wait for it, then the next), so a component added early (the
// ops server, a queue) outlives the ones that feed it. The whole stop is bound
// by ShutdownTimeout. The zero Group is ready to use.
type Group struct {
	// Logger receives one line per component stop with its duration; nil
	// discards.
	Logger *slog.Logger
	// ShutdownTimeout bounds the whole stop; zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	members []member
}

type member struct {
	name string
	run  func(ctx context.Context) error
}

// Add adds a component. run must return soon after its context ends; a
// return of nil or of an error wrapping context.Canceled after that is a clean
// stop. Add must not be called once Run has started.
func (g *Group) Add(name string, run func(ctx context.Context) error) {
	g.members = append(g.members, member{name: name, run: run})
}

// Run starts every component and blocks until all have stopped or the
// shutdown deadline has passed. A component returning early, even with nil,
// stops the group. Run returns the first real error: that of the component
// whose return stopped the group, else the first, in stop order, that is not
// a clean stop. If the deadline passed it also returns an error naming the
// components still running; those are left running, as the caller is expected
// to exit.
func (g *Group) Run(ctx context.Context) error {
	logger := g.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	timeout := g.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	n := len(g.members)
	if n == 0 {
		return nil
	}

	// Each member gets its own context, detached from ctx's cancellation,
	// so that the stop below can cancel them one at a time in order.
	cancels := make([]context.CancelFunc, n)
	done := make([]chan error, n) // each receives its member's result once
	exits := make(chan int, n)    // indexes of members as they return
	for i, m := range g.members {
		mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i], done[i] = cancel, make(chan error, 1)
		go func() {
			done[i] <- m.run(mctx)
			exits <- i
		}()
	}

	var firstErr error
	exited := make([]bool, n)
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "reason", context.Cause(ctx))
	case i := <-exits:
		exited[i] = true
		// A return nobody asked for: anything but nil is an error,
		// context.Canceled included.
		if err := <-done[i]; err != nil {
			firstErr = named(g.members[i].name, err)
			logger.Error("shutting down: component failed", "component", g.members[i].name, "err", err)
		} else {
			logger.Warn("shutting down: component returned", "component", g.members[i].name)
		}
	}

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	start := time.Now()
	for i := n - 1; i >= 0; i-- {
		if exited[i] {
			continue
		}
		name := g.members[i].name
		t0 := time.Now()
		cancels[i]()
		select {
		case err := <-done[i]:
			exited[i] = true
			if cleanStop(err) {
				logger.Info("component stopped", "component", name, "took", time.Since(t0))
				break
			}
			logger.Error("component stopped with error", "component", name, "took", time.Since(t0), "err", err)
			if firstErr == nil {
				firstErr = named(name, err)
			}
		case <-deadline.C:
			var running []string
			for j := range n {
				cancels[j]()
				if !exited[j] {
					running = append(running, g.members[j].name)
				}
			}
			err := fmt.Errorf("shutdown deadline of %s passed; still running: %s", timeout, strings.Join(running, ", "))
			logger.Error("shutdown deadline passed", "timeout", timeout, "running", running)
			return errors.Join(firstErr, err)
		}
	}
	logger.Info("all components stopped", "took", time.Since(start))
	return firstErr
}

// cleanStop reports whether err is what a component returns when asked to
// stop.
func cleanStop(err error) bool {
	return err == nil || errors.Is(err, context.Canceled)
}

// named prefixes err with the component's name unless it already starts with
// it, as errors like "frontend: listen: ..." do.
func named(name string, err error) error {
	if strings.HasPrefix(err.Error(), name+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}
