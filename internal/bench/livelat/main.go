// Command livelat measures the live lane's latency as a client sees it: it connects to a
// livefeed's WebSocket (/v1/live), subscribes to every vehicle its token may see, and for each
// vehicle in each update takes the time from the reading's device timestamp (time_ms, the
// simulator's clock on this same machine) and from the frontend's receipt (recv_ms) to the
// update's arrival here. scripts/bench-live.sh runs it against real processes.
//
//	go run ./internal/bench/livelat -url ws://127.0.0.1:8081/v1/live -token T -duration 20s \
//		-summary live.json -timeline live-timeline.jsonl
//
// Times are in whole milliseconds (the API's resolution), so a figure is ±1 ms. With -clients N,
// N-1 more clients subscribe to every vehicle too and read what they get without decoding it, so
// that the livefeed serves N clients while the first one measures (issue 20's target is for 500).
// The others read through a 64 KiB buffer (a few read(2) calls per message, not one per 4 KiB);
// the summary gives the process's own CPU (process_cpu_seconds, cores_used) so that a run can
// show whether the load side, which shares its core with the simulator in scripts/bench-live.sh,
// kept up: a measuring client waiting for its core adds that wait to every figure.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/sim"
)

func main() {
	var (
		url      = flag.String("url", "ws://127.0.0.1:8081/v1/live", "the livefeed's WebSocket `url`")
		token    = flag.String("token", "", "client `token` (Authorization: Bearer)")
		duration = flag.Duration("duration", 20*time.Second, "how long to measure")
		summary  = flag.String("summary", "-", "write the JSON summary to this `file` (- for standard output)")
		timeline = flag.String("timeline", "", "write a JSON line per second to this `file` (empty for none)")
		clients  = flag.Int("clients", 1, "WebSocket clients following every vehicle (`number`); the last to connect measures, the others only read")
		settle   = flag.Duration("settle", 3*time.Second, "how long the measuring client reads before it measures: its snapshot, and the catching up of a client that has just connected, are not the steady state")
		deflate  = flag.Bool("deflate", false, "offer permessage-deflate, as browsers do (the livefeed compresses only with -compression)")
	)
	flag.Parse()
	if *clients < 1 {
		fmt.Fprintln(os.Stderr, "livelat: -clients: want 1 or more")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	measureDialer.EnableCompression = *deflate
	othersDialer.EnableCompression = *deflate
	if err := run(ctx, *url, *token, *duration, *settle, *summary, *timeline, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "livelat:", err)
		os.Exit(1)
	}
}

// Summary is what livelat writes at the end.
type Summary struct {
	URL     string  `json:"url"`
	Seconds float64 `json:"seconds"`
	// Updates counts vehicle states received in update messages (snapshots are not counted).
	Updates         uint64        `json:"updates"`
	Vehicles        int           `json:"vehicles"`
	UpdatesPerSec   float64       `json:"updates_per_second"`
	Messages        uint64        `json:"messages"`
	Disconnected    bool          `json:"disconnected,omitempty"`
	FromDeviceMs    sim.LatencyMs `json:"from_device_ms"`
	FromFrontendMs  sim.LatencyMs `json:"from_frontend_ms"`
	ClockResolution string        `json:"clock_resolution"`

	// Clients is how many clients followed every vehicle; OthersDisconnected how many of those
	// that only read were disconnected before the end.
	Clients            int `json:"clients"`
	OthersDisconnected int `json:"others_disconnected,omitempty"`
	// OthersMessages counts the messages the other clients read, all together.
	OthersMessages uint64 `json:"others_messages,omitempty"`

	// WireBytes is what every client read from its connection over the measurement, frames and
	// compression included (snapshots and hellos are read before it starts); WireBytesPerUpdate
	// is that over Updates × Clients.
	WireBytes          int64   `json:"wire_bytes"`
	WireBytesPerUpdate float64 `json:"wire_bytes_per_update"`

	// ProcessCPUSeconds is livelat's own CPU (user + system) over the measurement, all clients;
	// CoresUsed is that over Seconds.
	ProcessCPUSeconds float64 `json:"process_cpu_seconds"`
	CoresUsed         float64 `json:"cores_used"`
}

// cpuSeconds returns the process's user + system CPU time so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// Point is one timeline line: the updates received in one second and their latency from the
// device timestamp.
type Point struct {
	T             float64 `json:"t"`
	Updates       uint64  `json:"updates"`
	UpdatesPerSec float64 `json:"updates_per_second"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
}

// dist summarises samples in milliseconds (sorted in place), exactly: every
// sample is kept, in the simulator's summary form.
func dist(s []int64) sim.LatencyMs {
	if len(s) == 0 {
		return sim.LatencyMs{}
	}
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return float64(s[max(i, 0)])
	}
	var sum int64
	for _, v := range s {
		sum += v
	}
	return sim.LatencyMs{Count: uint64(len(s)), P50: q(0.5), P90: q(0.9), P99: q(0.99), P999: q(0.999),
		Max: float64(s[len(s)-1]), Mean: math.Round(float64(sum)/float64(len(s))*100) / 100}
}

type message struct {
	Type     string `json:"type"`
	Vehicles []struct {
		ID     string `json:"id"`
		TimeMs int64  `json:"time_ms"`
		RecvMs int64  `json:"recv_ms"`
	} `json:"vehicles"`
}

// wire counts the bytes every client reads from its connection.
var wire atomic.Int64

type countingConn struct{ net.Conn }

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	wire.Add(int64(n))
	return n, err
}

func countingDial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{c}, nil
}

// measureDialer is the measuring client's; othersDialer the other clients': a read buffer that
// takes a whole update message in one read(2), where gorilla's default (4 KiB) takes several.
var (
	measureDialer = &websocket.Dialer{HandshakeTimeout: 45 * time.Second, NetDialContext: countingDial}
	othersDialer  = &websocket.Dialer{HandshakeTimeout: 45 * time.Second, NetDialContext: countingDial,
		ReadBufferSize: 64 << 10}
)

// dial connects a client and subscribes it to every vehicle its token may see.
func dial(ctx context.Context, d *websocket.Dialer, url, token string) (*websocket.Conn, error) {
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, resp, err := d.DialContext(dctx, url, h)
	cancel()
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("connect %s: %w (HTTP %s)", url, err, resp.Status)
		}
		return nil, fmt.Errorf("connect %s: %w", url, err)
	}
	if err := conn.WriteJSON(map[string]string{"type": "subscribe", "id": "livelat"}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	return conn, nil
}

// discard reads conn's messages for d without measuring them. It checks the time after each
// message rather than setting a read deadline at d: gorilla's connection cannot be read again
// after a read error, a timeout included. Updates arrive many times a second, so it returns soon
// after d; a livefeed silent for 30 s past it is a failure.
func discard(conn *websocket.Conn, d time.Duration) error {
	end := time.Now().Add(d)
	_ = conn.SetReadDeadline(end.Add(30 * time.Second))
	for time.Now().Before(end) {
		_, r, err := conn.NextReader()
		if err != nil {
			return fmt.Errorf("settle: %w", err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
	}
	return conn.SetReadDeadline(time.Time{})
}

// connectOthers connects n more clients, before the measurement starts. Each reads from the
// moment it is connected (a client that did not would fill its socket and fall behind the
// livefeed's stream while the others connect), until its read deadline: the returned others'
// setEnd sets it.
func connectOthers(ctx context.Context, url, token string, n int) (*others, error) {
	o := &others{}
	for i := range n {
		conn, err := dial(ctx, othersDialer, url, token)
		if err != nil {
			o.setEnd(time.Now())
			o.wait()
			return nil, fmt.Errorf("client %d of %d: %w", i+2, n+1, err)
		}
		o.conns = append(o.conns, conn)
		o.wg.Go(func() {
			defer conn.Close()
			for {
				if _, _, err := conn.NextReader(); err != nil {
					if end := o.end.Load(); (end == 0 || time.Now().UnixNano() < end) && ctx.Err() == nil {
						o.lost.Add(1)
					}
					return
				}
				if o.end.Load() != 0 {
					o.msgs.Add(1)
				}
			}
		})
	}
	return o, nil
}

// others are the clients that only read.
type others struct {
	conns []*websocket.Conn
	wg    sync.WaitGroup
	end   atomic.Int64 // UnixNano of the measurement's end; 0 before it starts
	lost  atomic.Int64
	msgs  atomic.Uint64 // read while measuring
}

// setEnd starts the measurement: the clients read until end.
func (o *others) setEnd(end time.Time) {
	o.end.Store(end.UnixNano())
	for _, c := range o.conns {
		_ = c.SetReadDeadline(end)
	}
}

// wait waits for the readers and says how many were disconnected before the end and how many
// messages they read while measuring.
func (o *others) wait() (int, uint64) { o.wg.Wait(); return int(o.lost.Load()), o.msgs.Load() }

func run(ctx context.Context, url, token string, duration, settle time.Duration, summaryPath, timelinePath string, clients int) error {
	// The other clients first, the measuring one last: a client connected first would not read
	// while the others connect (seconds for hundreds), and the updates queued in its socket
	// meanwhile would count that wait as latency.
	more, err := connectOthers(ctx, url, token, clients-1)
	if err != nil {
		return err
	}
	conn, err := dial(ctx, measureDialer, url, token)
	if err != nil {
		more.setEnd(time.Now())
		more.wait()
		return err
	}
	defer conn.Close()
	var tl *json.Encoder
	if timelinePath != "" {
		f, err := os.Create(timelinePath)
		if err != nil {
			return fmt.Errorf("create timeline: %w", err)
		}
		defer f.Close()
		tl = json.NewEncoder(f)
	}

	if err := discard(conn, settle); err != nil {
		more.setEnd(time.Now())
		more.wait()
		return err
	}
	start := time.Now()
	cpu0, wire0 := cpuSeconds(), wire.Load()
	end := start.Add(duration)
	more.setEnd(end)
	// The reader stops at the deadline or when ctx ends: closing the connection unblocks it.
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(end)):
		}
		_ = conn.SetReadDeadline(time.Now())
	}()
	var (
		fromDevice, fromFrontend, second []int64
		sum                              = Summary{URL: url, ClockResolution: "1ms", Clients: clients}
		vehicles                         = map[string]struct{}{}
		nextTick                         = start.Add(time.Second)
	)
	flush := func(now time.Time) error {
		if tl == nil {
			return nil
		}
		d := dist(second)
		p := Point{T: math.Round(now.Sub(start).Seconds()*1000) / 1000, Updates: d.Count,
			UpdatesPerSec: float64(d.Count), P50Ms: d.P50, P99Ms: d.P99}
		second = second[:0]
		if err := tl.Encode(p); err != nil {
			return fmt.Errorf("write timeline: %w", err)
		}
		return nil
	}
	for {
		_, b, err := conn.ReadMessage()
		now := time.Now()
		for !now.Before(nextTick) && !nextTick.After(end) {
			if err := flush(nextTick); err != nil {
				return err
			}
			nextTick = nextTick.Add(time.Second)
		}
		if err != nil {
			if !now.Before(end) || ctx.Err() != nil {
				break
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) || errors.Is(err, os.ErrDeadlineExceeded) {
				sum.Disconnected = true
				break
			}
			return fmt.Errorf("read: %w", err)
		}
		var m message
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("decode message: %w", err)
		}
		sum.Messages++
		if m.Type != "update" {
			continue
		}
		nowMs := now.UnixMilli()
		for _, v := range m.Vehicles {
			if v.TimeMs == 0 {
				continue
			}
			vehicles[v.ID] = struct{}{}
			fromDevice = append(fromDevice, nowMs-v.TimeMs)
			second = append(second, nowMs-v.TimeMs)
			if v.RecvMs > 0 {
				fromFrontend = append(fromFrontend, nowMs-v.RecvMs)
			}
		}
	}
	sum.Seconds = math.Round(time.Since(start).Seconds()*1000) / 1000
	sum.OthersDisconnected, sum.OthersMessages = more.wait()
	sum.ProcessCPUSeconds = math.Round((cpuSeconds()-cpu0)*1000) / 1000
	sum.WireBytes = wire.Load() - wire0
	if sum.Seconds > 0 {
		sum.CoresUsed = math.Round(sum.ProcessCPUSeconds/sum.Seconds*1000) / 1000
	}
	sum.Vehicles = len(vehicles)
	sum.FromDeviceMs, sum.FromFrontendMs = dist(fromDevice), dist(fromFrontend)
	sum.Updates = sum.FromDeviceMs.Count
	if sum.Updates > 0 {
		sum.WireBytesPerUpdate = math.Round(float64(sum.WireBytes)/float64(sum.Updates)/float64(clients)*10) / 10
	}
	if sum.Seconds > 0 {
		sum.UpdatesPerSec = math.Round(float64(sum.Updates)/sum.Seconds*10) / 10
	}
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	b = append(b, '\n')
	if summaryPath == "-" {
		_, err = os.Stdout.Write(b)
	} else {
		err = os.WriteFile(summaryPath, b, 0o644)
	}
	if err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	if sum.Updates == 0 {
		return errors.New("no update received")
	}
	return nil
}
