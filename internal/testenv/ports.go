package testenv

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Listening ports for processes a test starts, outside the kernel's
// ephemeral range.
//
// A port found free by listening on 127.0.0.1:0 and closing is free only
// until someone takes it, and the process it is for binds it a moment
// later. Ports from :0 come from the ephemeral range
// (net.ipv4.ip_local_port_range, 32768–60999 by default), which is also
// where every outgoing connection takes its source port: with simulated
// fleets dialling thousands of connections and processes restarting, one
// of them took such a port between the probe and the bind, and a frontend
// failed with "address already in use". Ports below that range are never given
// to outgoing connections, nor to other tests' :0 listeners, so FreeAddr
// picks one there at random and probes it; within one test binary it never
// returns a port twice.

// lowestPort is the bottom of the range FreeAddr draws from: above the
// registered ports most services use.
const lowestPort = 10000

var (
	handedOut sync.Map // "127.0.0.1:port" → struct{}
	portRange = sync.OnceValues(ephemeralFloor)
)

// ephemeralFloor returns FreeAddr's range: [lowestPort, the first
// ephemeral port), or ok false when the ephemeral range starts too low
// to leave one (then FreeAddr falls back to :0).
func ephemeralFloor() (hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, false
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < lowestPort+1000 {
		return 0, false
	}
	return lo, true
}

// FreeAddr returns a loopback address ("127.0.0.1:port") that no socket
// holds now, below the ephemeral range when there is room, and never one
// it returned before in this process.
func FreeAddr(t testing.TB) string {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// freePort is FreeAddr's port, for the servers this package starts.
func freePort() (int, error) {
	hi, ok := portRange()
	for range 10_000 {
		addr := "127.0.0.1:0"
		if ok {
			addr = fmt.Sprintf("127.0.0.1:%d", lowestPort+rand.IntN(hi-lowestPort))
			if _, dup := handedOut.Load(addr); dup {
				continue
			}
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: another draw
		}
		tcp := l.Addr().(*net.TCPAddr)
		l.Close()
		if _, dup := handedOut.LoadOrStore(tcp.String(), struct{}{}); !dup {
			return tcp.Port, nil
		}
	}
	return 0, errors.New("testenv: no free loopback port found in 10,000 draws")
}
