//go:build linux

package tlsserve

import (
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// BenchmarkHandshake measures the server's CPU per TLS handshake, full and
// resumed, with an ECDSA P-256 certificate and Go's default key exchange
// (X25519MLKEM768 when the client offers it, as Go clients do), and again
// with a client that offers X25519 only (the "x25519" cases: what embedded
// TLS stacks offer; the post-quantum hybrid's share of a handshake is the
// difference): what a frontend spends per device connection before the
// WebSocket upgrade. The
// server's handshake runs on a goroutine locked to its thread, whose CPU
// clock is read around it (the client's work is on other threads and not
// counted). HandshakeCost follows this benchmark.
//
//	go test -run '^$' -bench BenchmarkHandshake -benchtime 2000x ./internal/tlsserve/
//
// server-µs/op is the figure; 1e6 ÷ it is the handshakes one core can do.
func BenchmarkHandshake(b *testing.B) {
	ca := tlstest.NewCA(b, "bench CA")
	leaf := ca.Server(b, "edge")
	cert := leaf.TLS(b)
	server := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	x25519 := []tls.CurveID{tls.X25519}
	for _, tc := range []struct {
		name    string
		version uint16
		resume  bool
		curves  []tls.CurveID // nil: Go's
	}{
		{"tls13/full", tls.VersionTLS13, false, nil},
		{"tls13/resumed", tls.VersionTLS13, true, nil},
		{"tls13/full/x25519", tls.VersionTLS13, false, x25519},
		{"tls13/resumed/x25519", tls.VersionTLS13, true, x25519},
		{"tls12/full", tls.VersionTLS12, false, nil},
		{"tls12/resumed", tls.VersionTLS12, true, nil},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MaxVersion: tc.version, CurvePreferences: tc.curves}
			if tc.resume {
				client.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				handshake(b, server, client) // the ticket
			}
			var cpu time.Duration
			b.ResetTimer()
			for range b.N {
				d, cs := handshake(b, server, client)
				if cs.DidResume != tc.resume {
					b.Fatalf("resumed %v, want %v", cs.DidResume, tc.resume)
				}
				if tc.curves != nil && cs.CurveID != tc.curves[0] {
					b.Fatalf("key exchange %v, want %v", cs.CurveID, tc.curves[0])
				}
				cpu += d
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "server-µs/op")
		})
	}
}

// handshake runs one handshake over loopback TCP and returns the server
// thread's CPU time and the server's view of the connection. The client reads once after
// the handshake, so that a TLS 1.3 ticket is taken in.
func handshake(b *testing.B, server, client *tls.Config) (time.Duration, tls.ConnectionState) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cpu time.Duration
		cs  tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		before := threadCPU()
		tc := tls.Server(c, server)
		err = tc.HandshakeContext(context.Background())
		cpu := threadCPU() - before
		if err == nil {
			_, err = tc.Write([]byte{1}) // after the tickets
		}
		done <- result{cpu, tc.ConnectionState(), err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	c.Close()
	r := <-done
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.cpu, r.cs
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}
