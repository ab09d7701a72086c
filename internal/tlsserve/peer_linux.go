package tlsserve

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerGone reports whether c's client has closed or reset it: its socket
// is past ESTABLISHED (CLOSE_WAIT: the client's FIN came; CLOSE: a reset).
// A client that gave up while its connection waited for a handshake has
// sent its ClientHello and then closed: a handshake would still be done,
// to the last signature, before its first write found nobody. One
// getsockopt; false when it cannot tell.
func peerGone(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	_ = rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		gone = err == nil && (info.State == unix.BPF_TCP_CLOSE_WAIT || info.State == unix.BPF_TCP_CLOSE)
	})
	return gone
}

// acceptQueueLen is the length of ln's accept queue in the kernel:
// connections established and not yet accepted (TCP_INFO of a listening
// socket reports it as unacked). 0 when it cannot tell.
func acceptQueueLen(ln net.Listener) int {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			n = int(info.Unacked)
		}
	})
	return n
}
