//go:build !linux

package tlsserve

import "errors"

func setReusePort(uintptr) error {
	return errors.New("SO_REUSEPORT is supported on Linux only; give each process its own port")
}

// ReusePortSupported reports whether Listen can share a port here.
const ReusePortSupported = false
