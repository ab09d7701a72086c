package frontend

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/gorilla/websocket"
)

// CloseServiceRestart (1012, "Service Restart" in the IANA registry) is the
// close of a lame-duck stop: this frontend is going away; reconnect at
// once, to another frontend of the list (the device's resend rule applies
// as after any close). The frame the connection was storing was stored and
// acked first.
const CloseServiceRestart = websocket.CloseServiceRestart

// reasonTextLameDuck is the reason text of a lame-duck close.
const reasonTextLameDuck = "lame duck: reconnect to another frontend"

// lameDuckTick is how often the lame-duck stop closes the connections that
// are due.
const lameDuckTick = 10 * time.Millisecond

// lameDuck closes the device connections open now, each with 1012 once the
// frame it is storing is stored and acked, spread evenly over window in a
// random order, so that a rolling restart moves its devices to the other
// frontends at a pace they can take instead of all at once. The gap
// between two closes is at most a second: a frontend with few devices
// stops soon. The listener is closed before: nothing new comes in. It
// returns how many it closed, early when ctx ends (a second signal).
func (f *Frontend) lameDuck(ctx context.Context, window time.Duration) int {
	f.mu.Lock()
	conns := make([]*conn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	n := len(conns)
	if n == 0 || window <= 0 {
		return 0
	}
	rand.Shuffle(n, func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	gap := min(window/time.Duration(n), time.Second)
	f.logger.Info("frontend: lame duck: closing device connections gradually, each told to reconnect elsewhere",
		"connections", n, "over", gap*time.Duration(n), "code", CloseServiceRestart)
	start := time.Now()
	t := time.NewTicker(min(lameDuckTick, max(gap, time.Millisecond)))
	defer t.Stop()
	closed := 0
	for closed < n {
		// Every connection whose time has come: the i-th at i gaps.
		due := min(n, int(time.Since(start)/gap)+1)
		for ; closed < due; closed++ {
			// Counted with the others, as connections_closed_total{code="1012"}.
			conns[closed].stop(CloseServiceRestart, reasonTextLameDuck)
		}
		if closed == n {
			break
		}
		select {
		case <-ctx.Done():
			return closed
		case <-t.C:
		}
	}
	return closed
}

// closeConns stops admitting connections, asks every connection to finish
// its frame and close with 1001, and waits for them until graceCtx ends;
// then it closes what is left by force. It returns how many connections
// were open.
func (f *Frontend) closeConns(graceCtx context.Context, forceStop context.CancelFunc) int {
	f.mu.Lock()
	f.closing = true
	conns := make([]*conn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		c.stop(closeGoingAway, reasonTextGoingAway)
	}
	allDone := make(chan struct{})
	go func() {
		f.connWG.Wait()
		close(allDone)
	}()
	select {
	case <-allDone:
		return len(conns)
	case <-graceCtx.Done():
	}
	f.mu.Lock()
	left := len(f.conns)
	for c := range f.conns {
		_ = c.ws.Close()
	}
	f.mu.Unlock()
	f.logger.Warn("frontend: shutdown grace passed; closing connections by force", "connections", left, "grace", f.cfg.ShutdownGrace)
	forceStop() // an append stuck on the disk returns, unacked
	<-allDone
	return len(conns)
}
