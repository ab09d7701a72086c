package daemon

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ValidateListenAddr checks an HTTP or WebSocket listen address, host:port,
// where the host may be empty (every interface) and the port is a number
// from 0 to 65535 (0: any free port).
func ValidateListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want host:port: %w", addr, err)
	}
	if _, err := parsePort(port); err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	return nil
}

// ValidateEndpoint checks a ZeroMQ endpoint: tcp://host:port, ipc://path or
// inproc://name. An endpoint that is bound (bind true) may use "*" or an
// empty host for every interface and port 0 or "*" for any free port; one
// that is connected to must name a host and a port. An endpoint connected
// to may also be dns+tcp://name:port, every address the name resolves to
// (internal/endpoints).
func ValidateEndpoint(ep string, bind bool) error {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return fmt.Errorf("endpoint %q: want tcp://host:port, dns+tcp://name:port, ipc://path or inproc://name", ep)
	}
	switch scheme {
	case "tcp", "dns+tcp":
		if scheme == "dns+tcp" && bind {
			return fmt.Errorf("endpoint %q: dns+tcp:// names the endpoints to connect to; bind tcp://host:port", ep)
		}
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return fmt.Errorf("endpoint %q: want tcp://host:port: %w", ep, err)
		}
		if bind {
			if port == "*" {
				return nil
			}
			if _, err := parsePort(port); err != nil {
				return fmt.Errorf("endpoint %q: %w", ep, err)
			}
			return nil
		}
		if host == "" || host == "*" {
			return fmt.Errorf("endpoint %q: a connect endpoint must name a host", ep)
		}
		if p, err := parsePort(port); err != nil || p == 0 {
			return fmt.Errorf("endpoint %q: a connect endpoint must name a port from 1 to 65535", ep)
		}
		return nil
	case "ipc", "inproc":
		if rest == "" {
			return fmt.Errorf("endpoint %q: empty %s address", ep, scheme)
		}
		return nil
	default:
		return fmt.Errorf("endpoint %q: unknown transport %q, want tcp, dns+tcp, ipc or inproc", ep, scheme)
	}
}

// ValidateEndpoints checks a list of endpoints that are connected to: it must
// not be empty, each must pass [ValidateEndpoint], and none may repeat.
func ValidateEndpoints(eps []string) error {
	if len(eps) == 0 {
		return errors.New("no endpoint given")
	}
	seen := make(map[string]bool, len(eps))
	for _, ep := range eps {
		if err := ValidateEndpoint(ep, false); err != nil {
			return err
		}
		if seen[ep] {
			return fmt.Errorf("endpoint %q: listed twice", ep)
		}
		seen[ep] = true
	}
	return nil
}

func parsePort(port string) (int, error) {
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return 0, fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return p, nil
}
