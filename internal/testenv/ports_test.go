package testenv

import (
	"net"
	"strconv"
	"testing"
)

// TestFreeAddr: the addresses are loopback, bindable, distinct, and below
// the ephemeral range (where outgoing connections never take them) when
// the kernel leaves room for it.
func TestFreeAddr(t *testing.T) {
	hi, below := portRange()
	seen := map[string]bool{}
	for range 300 {
		addr := FreeAddr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("FreeAddr = %q, want 127.0.0.1:port", addr)
		}
		p, _ := strconv.Atoi(port)
		if below && (p < lowestPort || p >= hi) {
			t.Fatalf("port %d outside [%d, %d)", p, lowestPort, hi)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s is not free: %v", addr, err)
		}
		l.Close()
	}
	if !below {
		t.Logf("the ephemeral range starts below %d: ports came from :0", lowestPort+1000)
	}
}
