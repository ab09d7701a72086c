package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// exit is os.Exit, replaced in tests.
var exit = os.Exit

// SignalContext returns a context that is cancelled by the first SIGINT or
// SIGTERM, with the signal as its cause ([context.Cause]): the graceful stop.
// A second SIGINT or SIGTERM logs and exits the process at once with status 1,
// for when the graceful stop hangs. Calling stop releases the signals and
// cancels the context; call it when the process no longer needs them.
//
// SIGHUP is not handled here: a component that reloads on SIGHUP subscribes
// to it itself, once it runs. Until then (a queue repair at start can take
// a while) SIGHUP's default action would end the process, so SignalContext
// subscribes to SIGHUP too, with a channel nobody reads: an operator's
// reload signal is never fatal, whatever the moment.
func SignalContext(parent context.Context, logger *slog.Logger) (ctx context.Context, stop context.CancelFunc) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	hups := make(chan os.Signal, 1) // never read: the signal package drops what does not fit
	signal.Notify(hups, syscall.SIGHUP)
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case sig := <-sigs:
			logger.Info("signal received, stopping gracefully; send it again to exit at once", "signal", sig.String())
			cancel(fmt.Errorf("received signal %s", sig))
		case <-quit:
			return
		}
		select {
		case sig := <-sigs:
			logger.Error("second signal received, exiting now", "signal", sig.String())
			exit(1)
		case <-quit:
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			signal.Stop(sigs)
			signal.Stop(hups)
			close(quit)
			<-finished
			cancel(context.Canceled)
		})
	}
	return ctx, stop
}
