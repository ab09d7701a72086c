package daemon

import (
	"errors"
	"fmt"
	"os"
)

// maxIDLen is the longest ID accepted: a Kubernetes pod name (a DNS
// subdomain) fits, and so does a ZeroMQ identity (at most 255 bytes).
const maxIDLen = 253

// DefaultID returns the host name, the natural identity of a process that
// must keep one across restarts (in a Kubernetes StatefulSet it is the pod
// name), or fallback when the host name is unavailable or not a valid ID.
func DefaultID(fallback string) string {
	h, err := os.Hostname()
	if err != nil || ValidateID(h) != nil {
		return fallback
	}
	return h
}

// ValidateID checks an identity or name used on the wire and in file names:
// 1 to 253 characters among ASCII letters, digits, '.', '_' and '-', not
// starting with '.' or '-'.
func ValidateID(id string) error {
	if id == "" {
		return errors.New("empty")
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%q: longer than %d characters", id, maxIDLen)
	}
	if id[0] == '.' || id[0] == '-' {
		return fmt.Errorf("%q: starts with %q", id, id[0])
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return fmt.Errorf("%q: character %q not allowed (want letters, digits, '.', '_', '-')", id, r)
		}
	}
	return nil
}
