package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkFleet measures what the simulator and the fake frontend together push through
// loopback: readings acked per second, per frame size and encoding. One op is one reading.
func BenchmarkFleet(b *testing.B) {
	for _, json := range []bool{false, true} {
		for _, frame := range []int{1, 50} {
			name := fmt.Sprintf("json=%v/frame=%d", json, frame)
			b.Run(name, func(b *testing.B) {
				s := newFakeFrontend(b, nil)
				const devices = 20
				cfg := testConfig(s.url())
				cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.JSON = devices, 1e6, frame, json
				cfg.Readings = max(1, b.N/devices)
				f, err := New(cfg, slog.New(slog.DiscardHandler), nil)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				f.Run(ctx)
				b.StopTimer()
				st := f.Stats()
				b.ReportMetric(float64(st.Acked)/st.Elapsed.Seconds(), "readings/s")
				b.ReportMetric(float64(st.AckLatency.P50.Microseconds()), "p50-µs")
			})
		}
	}
}

// BenchmarkGenerateFrame measures a device's own CPU per frame in the throughput scenario
// (frames of 50 readings at 1,000 readings/s): the vehicle model taking 50 readings into the
// outbox, the frame's encoding and its WebSocket framing (masking included) into a connection
// that discards what it is given, then the ack's removal of the readings. One op is one frame;
// ns/reading is ns/op ÷ 50. No socket, no server: what is left is the simulator's part alone.
func BenchmarkGenerateFrame(b *testing.B) {
	for _, json := range []bool{false, true} {
		b.Run(fmt.Sprintf("json=%v", json), func(b *testing.B) {
			const frame = 50
			cfg := testConfig("ws://bench.invalid")
			cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.Window, cfg.JSON = 1, 1000, frame, 8, json
			f, d := loneDevice(b, cfg)
			nc := &discardConn{}
			dialer := *d.dialer
			dialer.NetDialContext = wrapBatch(func(context.Context, string, string) (net.Conn, error) { return nc, nil })
			conn, _, err := dialer.Dial("ws://bench.invalid/", nil)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			// The clock is the benchmark's: slots run ahead of wall time (50 per op), so the
			// catch-up that ack does (generateLocked) finds nothing due.
			d.genStart = f.since()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				// Take one frame's readings, as generate does when 50 slots are due.
				d.mu.Lock()
				d.takeDue(d.slots + frame)
				d.mu.Unlock()
				if _, err := d.sendAvailable(conn); err != nil {
					b.Fatal(err)
				}
				if err := d.ack(d.out.at(d.out.len()-1).seq, f.since()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frame), "ns/reading")
			b.ReportMetric(float64(nc.written.Load())/float64(b.N*frame), "B/reading")
		})
	}
}

// discardConn is a net.Conn that answers one WebSocket handshake and then discards every write;
// reads after the handshake block until Close.
type discardConn struct {
	mu      sync.Mutex
	req     bytes.Buffer
	resp    *bytes.Reader
	closed  chan struct{}
	once    sync.Once
	written atomic.Int64
	// writes are the writes after the handshake, kept when keep is set; fail makes them fail.
	keep, fail bool
	writes     [][]byte
}

func (c *discardConn) init() { c.once.Do(func() { c.closed = make(chan struct{}) }) }

func (c *discardConn) Write(p []byte) (int, error) {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resp != nil {
		if c.fail {
			return 0, net.ErrClosed
		}
		c.written.Add(int64(len(p)))
		if c.keep {
			c.writes = append(c.writes, bytes.Clone(p))
		}
		return len(p), nil
	}
	c.req.Write(p)
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(c.req.Bytes())))
	if err != nil {
		return len(p), nil // not all of it yet
	}
	h := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	c.resp = bytes.NewReader([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(h[:]) + "\r\n\r\n"))
	return len(p), nil
}

func (c *discardConn) Read(p []byte) (int, error) {
	c.init()
	c.mu.Lock()
	if c.resp != nil && c.resp.Len() > 0 {
		defer c.mu.Unlock()
		return c.resp.Read(p)
	}
	c.mu.Unlock()
	<-c.closed
	return 0, net.ErrClosed
}

func (c *discardConn) Close() error {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return nil
}

func (c *discardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *discardConn) SetDeadline(time.Time) error      { return nil }
func (c *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (c *discardConn) SetWriteDeadline(time.Time) error { return nil }
