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
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
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
		clients  = flag.Int("clients", 1, "WebSocket clients following every vehicle (`number`); the first measures, the others only read")
	)
	flag.Parse()
	if *clients < 1 {
		fmt.Fprintln(os.Stderr, "livelat: -clients: want 1 or more")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *url, *token, *duration, *summary, *timeline, *clients); err != nil {
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

// dial connects a client and subscribes it to every vehicle its token may see.
func dial(ctx context.Context, url, token string) (*websocket.Conn, error) {
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, resp, err := websocket.DefaultDialer.DialContext(dctx, url, h)
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

// connectOthers connects n more clients, before the measurement starts.
func connectOthers(ctx context.Context, url, token string, n int) ([]*websocket.Conn, error) {
	conns := make([]*websocket.Conn, 0, n)
	for i := range n {
		conn, err := dial(ctx, url, token)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("client %d of %d: %w", i+2, n+1, err)
		}
		conns = append(conns, conn)
	}
	return conns, nil
}

// readOthers has each of conns read until end without decoding; the returned function waits for
// them and says how many were disconnected before end.
func readOthers(ctx context.Context, conns []*websocket.Conn, end time.Time) func() int {
	var (
		wg   sync.WaitGroup
		lost atomic.Int64
	)
	for _, conn := range conns {
		_ = conn.SetReadDeadline(end)
		wg.Go(func() {
			defer conn.Close()
			for {
				if _, _, err := conn.NextReader(); err != nil {
					if time.Now().Before(end) && ctx.Err() == nil {
						lost.Add(1)
					}
					return
				}
			}
		})
	}
	return func() int { wg.Wait(); return int(lost.Load()) }
}

func run(ctx context.Context, url, token string, duration time.Duration, summaryPath, timelinePath string, clients int) error {
	conn, err := dial(ctx, url, token)
	if err != nil {
		return err
	}
	defer conn.Close()
	more, err := connectOthers(ctx, url, token, clients-1)
	if err != nil {
		return err
	}
	var tl *json.Encoder
	if timelinePath != "" {
		f, err := os.Create(timelinePath)
		if err != nil {
			return fmt.Errorf("create timeline: %w", err)
		}
		defer f.Close()
		tl = json.NewEncoder(f)
	}

	start := time.Now()
	end := start.Add(duration)
	waitOthers := readOthers(ctx, more, end)
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
	sum.OthersDisconnected = waitOthers()
	sum.Vehicles = len(vehicles)
	sum.FromDeviceMs, sum.FromFrontendMs = dist(fromDevice), dist(fromFrontend)
	sum.Updates = sum.FromDeviceMs.Count
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
