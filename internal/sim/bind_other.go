//go:build !linux

package sim

import "syscall"

// bindAddressNoPort does nothing where IP_BIND_ADDRESS_NO_PORT does not
// exist: a source address then holds ~28k connections in all.
func bindAddressNoPort(_, _ string, _ syscall.RawConn) error { return nil }
