package sim

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/telemetry"
)

// device is one simulated tracker. Its writer goroutine (run) takes readings, connects, sends and
// reconnects; while connected, a reader goroutine (readLoop) applies acks. The outbox and the
// send state are shared between the two under mu.
type device struct {
	f      *Fleet
	idx    int // index in the fleet
	id     string
	token  string
	dialer *websocket.Dialer

	// Writer goroutine only.
	rng      *rand.Rand
	veh      mover
	slots    int64 // reading slots elapsed (taken or dropped)
	seqs     uint64
	genStart time.Duration // since epoch: slot k is at genStart + k/Rate
	scratch  []*frameReading
	uplink   telemetry.Uplink
	wbuf     []byte
	sending  []sentFrame // frames of the current sendAvailable not yet counted as sent

	mu sync.Mutex
	// out holds the un-acked readings, oldest first.
	out *outbox
	// next is the outbox index of the first reading not yet sent on the current connection:
	// readings [0, next) are in flight.
	next int
	// frames holds the last seq of each frame in flight, oldest first.
	frames []uint64
	// progressAt is when the frames in flight last made progress (an ack, or the first of them
	// was sent), since epoch.
	progressAt time.Duration
	// gotAck is set when the current connection received an ack that acked something.
	gotAck bool

	// cmd is the device's side of commands (commands.go).
	cmd cmdState
	// base is the HTTP base URL of the frontend of the current connection (firmware
	// downloads); fwVersion the firmware version it runs (Config.FirmwareVersion, then the
	// last it installed), named at each connect.
	base      atomic.Pointer[string]
	fwVersion atomic.Pointer[string]

	ackedSeq atomic.Uint64
	// wake tells the writer that acks opened the window.
	wake chan struct{}

	// tlsSession is the device's TLS session cache (one session), tlsCert its client
	// certificate once made (under mu).
	tlsSession session
	tlsCert    *tls.Certificate
}

func newDevice(f *Fleet, k int, seed uint64) *device {
	i := f.cfg.DeviceOffset + k
	id := DeviceID(f.cfg.IDPrefix, i)
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	// The vehicle has its own generator, so that its journey does not depend on network timing.
	var veh mover
	if f.cfg.Script != nil {
		veh = newScripted(f.cfg.Script)
	} else {
		v := newVehicle(rand.New(rand.NewPCG(seed^0x9e3779b97f4a7c15, uint64(i))), classOf(i))
		v.eventRate = max(0, f.cfg.EventRate)
		veh = v
	}
	d := &device{
		f:      f,
		idx:    k,
		id:     id,
		token:  Token(f.cfg.TokenSeed, id),
		dialer: f.dialers[k%len(f.dialers)],
		rng:    rng,
		veh:    veh,
		out:    newOutbox(f.cfg.Outbox),
		wake:   make(chan struct{}, 1),
	}
	if v := f.cfg.FirmwareVersion; v != "" {
		d.fwVersion.Store(&v)
	}
	return d
}

// Reasons a session ends, besides the close codes and downlink errors the server gives.
const (
	endStop       = "" // the device stopped: not a disconnect
	endError      = "error"
	endAckTimeout = "ack_timeout"
	endWrite      = "write"
	endProtocol   = "protocol"
	endStampede   = "stampede"
)

// run is the device's writer goroutine: it lives as long as the device.
func (d *device) run(ctx context.Context) {
	f, cfg := d.f, d.f.cfg
	defer f.c.devicesDone.Add(1)

	// Stop timer: Duration, then Drain.
	var stopC <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Duration + cfg.Drain - f.since())
		defer t.Stop()
		stopC = t.C
	}
	// Staggered start.
	if cfg.ConnectRate > 0 && d.idx > 0 {
		at := time.Duration(float64(d.idx) / cfg.ConnectRate * float64(time.Second))
		t := time.NewTimer(at - f.since())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-stopC:
			t.Stop()
			return
		case <-t.C:
		}
	}
	d.genStart = f.since()
	var tick <-chan time.Time
	if cfg.Rate > 0 {
		t := time.NewTicker(readingTick(cfg.Rate))
		defer t.Stop()
		tick = t.C
		d.generate()
	}

	// The failures in a row (full jitter: docs/ingest.md's device contract), and the frontend of
	// the last attempt (avoided at the next one, unless it told the device when to come back).
	retry := backoff.NewFull(cfg.BackoffMin, cfg.BackoffMax, d.rng)
	lastURL := -1
	back := false // the next attempt goes back to lastURL
	// A place in line a frontend holds for this device while it asks another one (held.url < 0:
	// none): see placeInLine.
	held := place{url: -1}
	var wait time.Duration
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
		waiting:
			for {
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-stopC:
					t.Stop()
					return
				case <-tick:
					d.generate()
				case <-t.C:
					break waiting
				}
			}
		}
		if ctx.Err() != nil || d.finished() {
			return
		}
		u, wentBack := lastURL, back
		if !back {
			u = d.pickURL(lastURL)
		}
		back, lastURL = false, u
		conn, retryAfter, err := d.dial(ctx, f.urls[u])
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait = retry.Next()
			switch {
			case retryAfter > 0:
				// Honour Retry-After: the server chose it to spread the herd (its place in
				// line). It is in whole seconds, so add up to a second of jitter: devices told
				// the same second do not all come back at its start.
				wait = retryAfter + time.Duration(d.rng.Int64N(int64(time.Second)))
				// Only a 503's place is worth asking elsewhere for: a 429 (a flapping device,
				// failed authentications) is a hold on this device, which another frontend
				// would soon give too.
				var he *handshakeError
				busy := errors.As(err, &he) && he.status == http.StatusServiceUnavailable
				var next int
				next, wait, held = d.placeInLine(u, wentBack, busy, wait, held)
				back = next >= 0
				if back {
					lastURL = next
				}
			case held.url >= 0:
				// The other frontend failed without a place to offer: go back to the one held.
				lastURL, wait, back = held.url, max(held.at-f.since(), 0), true
				held = place{url: -1}
			}
			var he *handshakeError
			if errors.As(err, &he) && he.status == http.StatusUnauthorized {
				wait = cfg.BackoffMax/2 + time.Duration(d.rng.Int64N(int64(cfg.BackoffMax/2)+1))
			}
			continue
		}
		held = place{url: -1}
		reason, progress := d.session(ctx, conn, tick, stopC)
		if reason == endStop {
			return
		}
		if progress {
			retry.Reset()
		}
		wait = retry.Next()
		if reason == reasonServiceRestart || reason == reasonGoingAway {
			// The frontend is stopping (a lame duck spreads these closes already): go to
			// another one at once, with up to a second of jitter.
			retry.Reset()
			wait = time.Duration(d.rng.Int64N(int64(time.Second)))
		}
	}
}

// readingTick is the period of a device's reading tick at rate readings a second.
func readingTick(rate float64) time.Duration {
	return max(time.Duration(float64(time.Second)/rate), 5*time.Millisecond)
}

// stuck reports whether frames are in flight and none has made progress for AckTimeout.
func (d *device) stuck() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.frames) > 0 && d.f.since()-d.progressAt > d.f.cfg.AckTimeout
}

// generate takes the readings due by now into the outbox.
func (d *device) generate() {
	d.mu.Lock()
	d.generateLocked(d.f.since())
	d.mu.Unlock()
}

// generateLocked takes the readings due by now (since epoch) into the outbox. Under mu: the
// writer calls it when it wakes, and the reader before an ack frees outbox room, so that a
// reading due before the ack finds the outbox as it was then (full: dropped), however late
// the writer woke.
func (d *device) generateLocked(now time.Duration) {
	cfg := d.f.cfg
	if cfg.Rate <= 0 {
		return
	}
	due := int64(float64(now-d.genStart)*cfg.Rate/float64(time.Second)) + 1
	if cfg.Duration > 0 {
		// Slots at or after Duration are not taken.
		due = min(due, int64(math.Ceil(float64(cfg.Duration-d.genStart)*cfg.Rate/float64(time.Second))))
	}
	d.takeDue(due)
}

// takeDue takes the readings of the slots before due into the outbox. Under mu.
func (d *device) takeDue(due int64) {
	cfg, c := d.f.cfg, &d.f.c
	if d.slots >= due || (cfg.Readings > 0 && d.seqs >= uint64(cfg.Readings)) {
		return
	}
	dt := 1 / cfg.Rate
	var taken, dropped uint64
	for ; d.slots < due; d.slots++ {
		if cfg.Readings > 0 && d.seqs >= uint64(cfg.Readings) {
			break
		}
		if d.out.full() {
			// Every slot still due is dropped; time passes for the vehicle all the same. In one
			// step: a device that was blocked for long must not take a million steps to catch up.
			n := due - d.slots
			d.veh.step(float64(n)*dt, &sample{})
			dropped += uint64(n)
			d.slots = due
			break
		}
		if sv, ok := d.veh.(interface{ silentNext(float64) bool }); ok && sv.silentNext(dt) {
			continue // a scripted silence: the device takes nothing
		}
		s := d.out.push()
		d.veh.step(dt, s)
		s.seq = cfg.FirstSeq + d.seqs
		d.seqs++
		at := d.genStart + time.Duration(float64(d.slots)*dt*float64(time.Second))
		s.timeMs = d.f.epoch.Add(at).UnixMilli()
		taken++
	}
	c.generated.Add(taken)
	c.outbox.Add(int64(taken))
	if dropped > 0 {
		c.drops.Add(dropped)
	}
}

// finished reports whether the device has taken all its readings and got them all acked.
func (d *device) finished() bool {
	cfg := d.f.cfg
	ended := cfg.Duration > 0 && cfg.Drain > 0 && d.f.since() >= cfg.Duration
	if cfg.Readings <= 0 && !ended {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	allTaken := ended || d.seqs >= uint64(cfg.Readings)
	return allTaken && d.out.len() == 0
}

// session runs one connection until it ends, and returns why (endStop: the device stops) and
// whether it made progress (an ack, or a connection held past BackoffMax).
func (d *device) session(ctx context.Context, conn *websocket.Conn, tick, stopC <-chan time.Time) (reason string, progress bool) {
	f, cfg := d.f, d.f.cfg
	// The stampede to watch is taken before the device counts as connected: a stampede
	// called once a device is counted (Stats().Connected) drops it. Taken after, a stampede
	// in between went unseen and the device stayed connected (TestStampedeIdle, rarely).
	stampede := f.stampedeSignal()
	f.c.connects.Add(1)
	f.c.connected.Add(1)
	start := f.since()
	conn.SetReadLimit(64 << 10)
	d.mu.Lock()
	d.gotAck = false
	d.mu.Unlock()
	readerDone := make(chan error, 1)
	d.resendReports()
	go d.readLoop(conn, readerDone)
	// A stop while the writer is blocked on a socket the server does not read: the writer would
	// wait for WriteTimeout. Give the clean close two seconds, then cut the connection.
	var kill atomic.Pointer[time.Timer]
	unwatch := context.AfterFunc(ctx, func() {
		kill.Store(time.AfterFunc(2*time.Second, func() { conn.NetConn().Close() }))
	})
	defer func() {
		unwatch()
		if t := kill.Load(); t != nil {
			t.Stop()
		}
	}()

	var ackCheck, slowTick <-chan time.Time
	// The ack timeout is checked every AckTimeout/4: on the writer's own wakes when it wakes
	// that often anyway (its reading tick, or the slow tick while the window is full), else on
	// a ticker of its own. A ticker per device beside the reading tick cost a sparse fleet
	// (one reading per 10 s, AckTimeout/4 = 15 s) two thirds of a goroutine wake per frame.
	selfCheck := false
	if cfg.Rate > 0 {
		selfCheck = max(readingTick(cfg.Rate), slowTickEvery) <= cfg.AckTimeout/4
	}
	if cfg.Rate > 0 && !selfCheck {
		t := time.NewTicker(max(cfg.AckTimeout/4, 5*time.Millisecond))
		defer t.Stop()
		ackCheck = t.C
	}
	if cfg.Rate > 0 {
		// While the window is full, new readings cannot be sent: the ack that opens it takes
		// them (ack calls generateLocked), and this slower tick keeps the outbox and drop
		// counts current meanwhile. A tick a device does not wait on costs nothing (Go 1.23+
		// timers), so the writer wakes ~once per frame, not every 5 ms.
		st := time.NewTicker(slowTickEvery)
		defer st.Stop()
		slowTick = st.C
	}
	var (
		readerErr    error
		readerExited bool
		closeCode    = -1 // the close frame to send, -1 for none
		err          error
	)
loop:
	for {
		windowFull := false
		err = d.sendReports(conn)
		if err == nil {
			windowFull, err = d.sendAvailable(conn)
		}
		if err != nil {
			// The write may have failed because the server closed the connection: then its
			// close code, which the reader has or is about to have, is the reason.
			conn.Close()
			readerErr, readerExited = <-readerDone, true
			reason = disconnectReason(readerErr)
			var ce *websocket.CloseError
			if !errors.As(readerErr, &ce) {
				reason = endWrite
				f.c.errors.Add(1)
			}
			break
		}
		if d.finished() {
			reason, closeCode = endStop, websocket.CloseNormalClosure
			break
		}
		genTick := tick
		if windowFull {
			genTick = slowTick
		}
		select {
		case <-ctx.Done():
			reason, closeCode = endStop, websocket.CloseGoingAway
			break loop
		case <-stopC:
			reason, closeCode = endStop, websocket.CloseNormalClosure
			break loop
		case <-genTick:
			d.generate()
			if selfCheck && d.stuck() {
				reason, closeCode = endAckTimeout, websocket.CloseNormalClosure
				break loop
			}
		case <-d.wake:
		case <-stampede:
			// The outage: the connection is cut, no close frame.
			reason = endStampede
			break loop
		case readerErr = <-readerDone:
			readerExited = true
			reason = disconnectReason(readerErr)
			var de *downlinkError
			if errors.As(readerErr, &de) {
				closeCode = websocket.CloseNormalClosure
			}
			break loop
		case <-ackCheck:
			if d.stuck() {
				reason, closeCode = endAckTimeout, websocket.CloseNormalClosure
				break loop
			}
		}
	}
	if closeCode >= 0 {
		msg := websocket.FormatCloseMessage(closeCode, "")
		_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		if !readerExited {
			// Give the server a moment to answer the close, so that it sees a clean close.
			select {
			case readerErr = <-readerDone:
				readerExited = true
			case <-time.After(time.Second):
			}
		}
	}
	conn.Close()
	if !readerExited {
		readerErr = <-readerDone
	}

	d.mu.Lock()
	progress = d.gotAck || f.since()-start >= cfg.BackoffMax
	if d.gotAck {
		f.c.acking.Add(-1)
		d.gotAck = false
	}
	// A server that says "try again later" or "rate limit" asks for backoff, however
	// long the connection lasted before it said so.
	if reason == strconv.Itoa(websocket.CloseTryAgainLater) || reason == strconv.Itoa(websocket.ClosePolicyViolation) {
		progress = false
	}
	f.c.inFlight.Add(-int64(d.next))
	d.next = 0
	d.frames = d.frames[:0]
	d.mu.Unlock()
	f.c.connected.Add(-1)

	if reason != endStop {
		f.c.count(&f.c.disconnects, reason)
		cause := readerErr
		if reason == endWrite {
			cause = err
		}
		f.note("disconnect:"+reason, "sim device disconnected", "device", d.id, "reason", reason, "err", cause)
	}
	return reason, progress
}

// downlinkError is a downlink Error: the server could not take a frame.
type downlinkError struct {
	code   uint32
	reason string
}

func (e *downlinkError) Error() string {
	return fmt.Sprintf("server error %d: %s", e.code, e.reason)
}

// errProtocol marks a server that broke the protocol.
var errProtocol = errors.New("protocol violation")

// readLoop reads downlinks until the connection fails or the server says something that ends the
// session, and sends why to done.
func (d *device) readLoop(conn *websocket.Conn, done chan<- error) {
	f := d.f
	var buf bytes.Buffer
	for {
		mt, r, err := conn.NextReader()
		if err != nil {
			done <- err
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			done <- err
			return
		}
		at := f.since()
		if mt == websocket.BinaryMessage {
			if seq, ok := telemetry.ParseAck(buf.Bytes()); ok {
				if err := d.ack(seq, at); err != nil {
					f.c.errors.Add(1)
					done <- err
					return
				}
				continue
			}
		}
		dl, err := telemetry.DecodeDownlink(buf.Bytes(), mt == websocket.TextMessage)
		if err != nil {
			f.c.errors.Add(1)
			done <- fmt.Errorf("%w: %w", errProtocol, err)
			return
		}
		switch k := dl.Kind.(type) {
		case *telemetry.Downlink_Ack:
			if err := d.ack(k.Ack.GetSeq(), at); err != nil {
				f.c.errors.Add(1)
				done <- err
				return
			}
		case *telemetry.Downlink_Error:
			f.c.errors.Add(1)
			done <- &downlinkError{code: k.Error.GetCode(), reason: k.Error.GetReason()}
			return
		case *telemetry.Downlink_Command:
			d.command(k.Command, time.Now())
		case *telemetry.Downlink_ReportAck:
			d.reportAck(k.ReportAck.GetIds())
		}
		// Other kinds (firmware, later) are ignored, as the wire format asks of devices.
	}
}

// ack applies an ack of seq received at (since epoch): it removes the readings it covers from the
// outbox and records their latencies.
func (d *device) ack(seq uint64, at time.Duration) error {
	f := d.f
	d.mu.Lock()
	defer d.mu.Unlock()
	if seq <= d.ackedSeq.Load() {
		return nil // an ack we had already: the server may repeat itself
	}
	// Readings due before this ack find the outbox as it was before it (see generateLocked).
	d.generateLocked(at)
	var (
		removed   int
		lastSeq   uint64
		groupSent int64
		groupN    uint64
		err       error
	)
	for d.out.len() > 0 {
		s := d.out.at(0)
		if s.seq > seq {
			break
		}
		if s.sentNs == 0 {
			err = fmt.Errorf("%w: ack of seq %d covers seq %d, never sent", errProtocol, seq, s.seq)
			break
		}
		// Readings of one frame share their send time: record them as one group.
		if s.sentNs != groupSent {
			f.c.latency.recordN(at-time.Duration(groupSent-1), groupN)
			groupSent, groupN = s.sentNs, 0
		}
		groupN++
		lastSeq = s.seq
		d.out.pop()
		removed++
	}
	f.c.latency.recordN(at-time.Duration(groupSent-1), groupN)
	if removed > 0 {
		inFlight := min(removed, d.next)
		d.next -= inFlight
		d.ackedSeq.Store(lastSeq)
		if !d.gotAck {
			f.c.acking.Add(1)
		}
		d.gotAck = true
		d.progressAt = at
		f.c.acked.Add(uint64(removed))
		f.c.outbox.Add(-int64(removed))
		f.c.inFlight.Add(-int64(inFlight))
	}
	wasFull := len(d.frames) >= f.cfg.Window
	n := 0
	for n < len(d.frames) && d.frames[n] <= seq {
		n++
	}
	d.frames = append(d.frames[:0], d.frames[n:]...)
	// Wake the writer only when the ack gives it work: a window it waited on (full), readings
	// not yet sent, or an empty outbox that may end the device (-readings, -duration with
	// -drain). A steady device's writer otherwise sends at its reading tick: waking it at every
	// ack as well cost a sparse fleet a goroutine wake per frame for nothing to send.
	if wasFull || d.next < d.out.len() || d.out.len() == 0 && (f.cfg.Readings > 0 || f.cfg.Duration > 0 && f.cfg.Drain > 0) {
		d.wakeWriter()
	}
	return err
}
