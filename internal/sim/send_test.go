package sim

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

// loneDevice returns the fleet of cfg (one device) and its device, its clock started now.
func loneDevice(tb testing.TB, cfg Config) (*Fleet, *device) {
	tb.Helper()
	f, err := New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		tb.Fatal(err)
	}
	f.epoch = time.Now()
	return f, f.devices[0]
}

// sendDevice returns a device of a one-device fleet with n readings in its outbox, connected
// (through batchConn, as in the fleet) to nc.
func sendDevice(t *testing.T, nc *discardConn, n int) (*device, *websocket.Conn) {
	t.Helper()
	cfg := testConfig("ws://send.invalid")
	cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.Window = 1, 1000, 50, 8
	_, d := loneDevice(t, cfg)
	dialer := *d.dialer
	dialer.NetDialContext = wrapBatch(func(context.Context, string, string) (net.Conn, error) { return nc, nil })
	conn, _, err := dialer.Dial("ws://send.invalid/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.mu.Lock()
	d.takeDue(int64(n))
	d.mu.Unlock()
	return d, conn
}

// TestSendAvailableBatches: frames ready together (a window opened by more than one frame)
// reach the socket in one write, as the same WebSocket messages they would be one by one, in
// order, and are counted once written.
func TestSendAvailableBatches(t *testing.T) {
	nc := &discardConn{keep: true}
	d, conn := sendDevice(t, nc, 120) // frames of 50, 50 and 20
	full, err := d.sendAvailable(conn)
	if err != nil || full {
		t.Fatalf("sendAvailable: full %v, err %v; want the outbox sent, window open", full, err)
	}
	if len(nc.writes) != 1 {
		t.Fatalf("%d writes to the socket, want 1 for the three frames", len(nc.writes))
	}
	msgs := clientMessages(t, nc.writes[0])
	if len(msgs) != 3 {
		t.Fatalf("%d WebSocket messages in the write, want 3", len(msgs))
	}
	var next uint64 = 1
	for i, m := range msgs {
		up, err := telemetry.DecodeUplink(m, false, time.Now(), telemetry.Limits{})
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		for _, r := range up.Readings {
			if r.GetSeq() != next {
				t.Fatalf("message %d: seq %d, want %d", i, r.GetSeq(), next)
			}
			next++
		}
	}
	if next != 121 {
		t.Fatalf("sent seqs 1..%d, want 1..120", next-1)
	}
	if st := d.f.Stats(); st.Sent != 120 || st.FramesSent != 3 {
		t.Fatalf("stats: sent %d in %d frames, want 120 in 3", st.Sent, st.FramesSent)
	}
}

// TestSendAvailableBatchFails: held frames whose write fails were never sent: not counted, and
// their readings not stamped (their ack latency will count from their real first send).
func TestSendAvailableBatchFails(t *testing.T) {
	nc := &discardConn{}
	d, conn := sendDevice(t, nc, 120)
	nc.mu.Lock()
	nc.fail = true
	nc.mu.Unlock()
	if _, err := d.sendAvailable(conn); err == nil {
		t.Fatal("sendAvailable: no error from a failed write")
	}
	if st := d.f.Stats(); st.Sent != 0 || st.FramesSent != 0 {
		t.Fatalf("stats: sent %d in %d frames, want none", st.Sent, st.FramesSent)
	}
	for i := range d.out.len() {
		if s := d.out.at(i); s.sentNs != 0 {
			t.Fatalf("reading seq %d stamped as sent", s.seq)
		}
	}
}

// clientMessages splits b into the payloads of the (masked, unfragmented) WebSocket frames a
// client wrote.
func clientMessages(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		if len(b) < 2 || b[0]&0x80 == 0 || b[1]&0x80 == 0 {
			t.Fatalf("not a final masked frame: % x", b[:min(len(b), 16)])
		}
		n, h := uint64(b[1]&0x7f), 2
		switch n {
		case 126:
			n, h = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			n, h = binary.BigEndian.Uint64(b[2:]), 10
		}
		mask := b[h : h+4]
		p := append([]byte(nil), b[h+4:h+4+int(n)]...)
		for i := range p {
			p[i] ^= mask[i%4]
		}
		out = append(out, p)
		b = b[h+4+int(n):]
	}
	return out
}

// TestAckTakesDueReadingsFirst: readings due before an ack find the outbox as it was before the
// ack frees room. The writer may wake long after (it waits for acks, not ticks, while its
// window is full): a full outbox then still drops them, as a device sampling on time would.
func TestAckTakesDueReadingsFirst(t *testing.T) {
	cfg := testConfig("ws://send.invalid")
	cfg.Devices, cfg.Rate, cfg.Outbox = 1, 1000, 100
	f, d := loneDevice(t, cfg)
	d.mu.Lock()
	d.takeDue(100) // slots 0..99: the outbox is full
	for i := range d.out.len() {
		d.out.at(i).sentNs = 1 // sent, in one frame
	}
	d.frames, d.next = append(d.frames, 100), 100
	d.mu.Unlock()

	// The ack of seqs 1..50 arrives at 150.5 ms: slots 100..150 were due while the outbox was full.
	if err := d.ack(50, 150*time.Millisecond+500*time.Microsecond); err != nil {
		t.Fatal(err)
	}
	st := f.Stats()
	if st.OutboxDrops != 51 || st.Generated != 100 {
		t.Fatalf("generated %d, dropped %d; want 100 taken and the 51 readings due before the ack dropped", st.Generated, st.OutboxDrops)
	}
	if n := d.out.len(); n != 50 {
		t.Fatalf("outbox holds %d readings after the ack, want 50", n)
	}
	// The next slot due after the ack is taken, with the next seq.
	d.mu.Lock()
	d.generateLocked(151*time.Millisecond + 500*time.Microsecond)
	last := d.out.at(d.out.len() - 1)
	d.mu.Unlock()
	if last.seq != 101 || last.timeMs != f.epoch.Add(151*time.Millisecond).UnixMilli() {
		t.Fatalf("next reading: seq %d at %d, want seq 101 at slot 151 (%d)", last.seq, last.timeMs, f.epoch.Add(151*time.Millisecond).UnixMilli())
	}
}

// TestAckWakesWriterOnlyForWork: an ack wakes the writer only when it gives it something to
// do (a window it waited on, readings not yet sent, an outbox whose emptying may end the
// device). A steady device sends at its reading tick; waking its writer at every ack as well
// cost a sparse fleet a goroutine wake per frame with nothing to send.
func TestAckWakesWriterOnlyForWork(t *testing.T) {
	cases := []struct {
		name             string
		readings         int
		inFlight, unsent int // frames of one reading each, in flight; readings taken, not sent
		window           int
		wantWake         bool
	}{
		{name: "steady: the ack empties the outbox", inFlight: 1, window: 8},
		{name: "readings waiting to be sent", inFlight: 1, unsent: 2, window: 8, wantWake: true},
		{name: "the window was full", inFlight: 2, window: 2, wantWake: true},
		{name: "a device with -readings may be done", readings: 1, inFlight: 1, window: 8, wantWake: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig("ws://send.invalid")
			cfg.Devices, cfg.Rate, cfg.Window, cfg.Readings = 1, 1, c.window, c.readings
			_, d := loneDevice(t, cfg)
			d.mu.Lock()
			d.takeDue(int64(c.inFlight + c.unsent))
			for i := range c.inFlight {
				d.out.at(i).sentNs = 1
				d.frames = append(d.frames, d.out.at(i).seq)
			}
			d.next = c.inFlight
			d.mu.Unlock()
			if err := d.ack(d.frames[len(d.frames)-1], time.Millisecond); err != nil {
				t.Fatal(err)
			}
			woken := false
			select {
			case <-d.wake:
				woken = true
			default:
			}
			if woken != c.wantWake {
				t.Fatalf("writer woken: %v, want %v", woken, c.wantWake)
			}
		})
	}
}
