package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// DefaultStatusInterval is how often drover all prints its status line.
const DefaultStatusInterval = 5 * time.Second

// status prints, every interval, one line saying what drover all did in
// that interval, from the metrics its components export (so the line says
// what /metrics says): devices connected, readings acked per second,
// records written per second by each sink, live clients, and what waits in
// the queues for each sink. A newcomer sees the pipeline work; an operator
// of split processes has the same numbers in Prometheus.
type status struct {
	g      prometheus.Gatherer
	w      io.Writer
	every  time.Duration
	sinks  []string // writer names, in -sinks order
	logger *slog.Logger
}

// snapshot is what one status line compares with the previous one.
type snapshot struct {
	at      time.Time
	acked   float64            // drover_frontend_readings_stored_total
	written map[string]float64 // by writer: drover_writer_records_written_total
	devices float64            // drover_frontend_connections
	live    float64            // drover_livefeed_clients
	queued  map[string]float64 // by queue: drover_queue_depth_bytes
}

func (s *status) run(ctx context.Context) error {
	t := time.NewTicker(s.every)
	defer t.Stop()
	prev, err := s.snapshot()
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := s.snapshot()
		if err != nil {
			s.logger.Warn("status line: gather metrics", "err", err)
			continue
		}
		if _, err := fmt.Fprintln(s.w, s.line(prev, cur)); err != nil {
			s.logger.Warn("status line: write", "err", err)
		}
		prev = cur
	}
}

func (s *status) snapshot() (snapshot, error) {
	fams, err := s.g.Gather()
	if err != nil {
		return snapshot{}, err
	}
	snap := snapshot{at: time.Now(), written: map[string]float64{}, queued: map[string]float64{}}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			v := value(m)
			switch f.GetName() {
			case "drover_frontend_readings_stored_total":
				snap.acked += v
			case "drover_frontend_connections":
				snap.devices += v
			case "drover_livefeed_clients":
				snap.live += v
			case "drover_writer_records_written_total":
				snap.written[label(m, "writer")] += v
			case "drover_queue_depth_bytes":
				snap.queued[label(m, "queue")] += v
			}
		}
	}
	return snap, nil
}

// line is the status line for the interval from prev to cur, e.g.
//
//	drover all: 1,000 devices, 1,003 readings/s acked | written/s: lake 998, influx 1,010 | live clients: 1 | waiting: router 12 KiB, lake 0 B, influx 3.1 MiB
//
// "waiting" is what the router's main queue holds (not fanned out yet)
// and, for each sink, what its subscriber queue at the router and its
// writer's queue hold: what that sink is behind.
func (s *status) line(prev, cur snapshot) string {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b float64) string {
		if secs <= 0 || b < a {
			return "0"
		}
		return thousands(int64((b - a) / secs))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "drover all: %s devices, %s readings/s acked", thousands(int64(cur.devices)), rate(prev.acked, cur.acked))
	b.WriteString(" | written/s:")
	for i, w := range s.sinks {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s %s", w, rate(prev.written[w], cur.written[w]))
	}
	fmt.Fprintf(&b, " | live clients: %s | waiting: frontend %s, router %s", thousands(int64(cur.live)),
		bytesIEC(cur.queued["frontend"]), bytesIEC(cur.queued["router"]))
	for _, w := range s.sinks {
		fmt.Fprintf(&b, ", %s %s", w, bytesIEC(cur.queued["sub-"+w]+cur.queued["writer-"+w]))
	}
	return b.String()
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// thousands formats n with commas: 12,345.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// bytesIEC formats a byte count: 0 B, 512 B, 12 KiB, 3.1 MiB, 2.0 GiB.
func bytesIEC(v float64) string {
	switch {
	case v < 1<<10:
		return fmt.Sprintf("%.0f B", v)
	case v < 1<<20:
		return fmt.Sprintf("%.0f KiB", v/(1<<10))
	case v < 1<<30:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", v/(1<<30))
}
