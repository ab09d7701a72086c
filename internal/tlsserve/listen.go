package tlsserve

import (
	"context"
	"fmt"
	"net"
	"syscall"
)

// Listen opens a TCP listener on addr. With reusePort, the socket is
// bound with SO_REUSEPORT: several processes (each its own frontend, with
// its own queue directory and id) then listen on one port and the kernel
// spreads new connections over them, by a hash of the client's address
// and port. Without it a second process on the port fails to start with
// "address already in use".
//
// TCP keepalive is off on the connections it accepts: the frontend and the
// livefeed, its two users, ping their WebSocket peers and close the idle
// ones themselves, sooner than TCP's probes would (Go's default, 15 s idle
// then 9 probes 15 s apart), and Go's default costs every accepted
// connection four setsockopt calls (~1.5% of a resumed TLS connection's
// CPU in a stampede: docs/performance.md).
func Listen(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if reusePort {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = setReusePort(fd) }); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set SO_REUSEPORT: %w", serr)
			}
			return nil
		}
	}
	return lc.Listen(ctx, "tcp", addr)
}
