package sim

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket bound to a
// source address: the kernel then picks its port at connect, unique per
// (source, destination) rather than per source, so that one source address
// can hold ~28k connections to each frontend address instead of ~28k in all.
func bindAddressNoPort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
