package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Summary is what a fleet did, as JSON for benchmark documents and scripts.
type Summary struct {
	Config SummaryConfig `json:"config"`
	// Start is when the fleet started.
	Start time.Time `json:"start"`
	// Seconds is how long it ran (so far, if still running).
	Seconds float64 `json:"seconds"`
	// Commands is what the devices did with the commands they received.
	Commands CommandStats `json:"commands"`
	// Devices is the fleet's size; DevicesDone of them had stopped.
	Devices     int   `json:"devices"`
	DevicesDone int   `json:"devices_done"`
	Connected   int64 `json:"connected"`
	// Connects counts successful upgrades; ConnectFailures and Disconnects count by cause (see
	// Stats).
	Connects        uint64            `json:"connects"`
	ConnectFailures map[string]uint64 `json:"connect_failures,omitempty"`
	Disconnects     map[string]uint64 `json:"disconnects,omitempty"`
	// Generated, Sent, Resent, Acked, OutboxDrops and Errors are counts of readings (Errors
	// excepted) as in Stats. Unacked is what the outboxes still held at the end.
	Generated uint64 `json:"generated"`
	Sent      uint64 `json:"sent"`
	// FramesSent and BytesSent are the frames written and their encoded size (resends included).
	FramesSent  uint64 `json:"frames_sent"`
	BytesSent   uint64 `json:"bytes_sent"`
	Resent      uint64 `json:"resent"`
	Acked       uint64 `json:"acked"`
	Unacked     int64  `json:"unacked"`
	OutboxDrops uint64 `json:"outbox_drops"`
	Errors      uint64 `json:"errors"`
	// Stampedes counts stampedes (every device dropping its connection at once).
	Stampedes uint64 `json:"stampedes,omitempty"`
	// TLSFull and TLSResumed count the TLS handshakes of wss:// connections, full and resumed.
	TLSFull    uint64 `json:"tls_handshakes_full,omitempty"`
	TLSResumed uint64 `json:"tls_handshakes_resumed,omitempty"`
	// SentPerSecond and AckedPerSecond are averages over Seconds.
	SentPerSecond  float64 `json:"sent_per_second"`
	AckedPerSecond float64 `json:"acked_per_second"`
	// AckLatencyMs is the ack latency distribution over the run, in milliseconds.
	AckLatencyMs LatencyMs `json:"ack_latency_ms"`
	// AckLatencySteadyMs is the same after Config.Warmup (acks received from then on): the
	// steady state without the first connections. Absent when no warm-up was set or it has not
	// ended.
	AckLatencySteadyMs *LatencyMs `json:"ack_latency_steady_ms,omitempty"`
	// WarmupSeconds is Config.Warmup.
	WarmupSeconds float64 `json:"warmup_seconds,omitempty"`
	// ProcessCPUSeconds is the CPU time (user + system) of the whole process the fleet ran in,
	// when the caller filled it in (drover sim does): the load generator's share of a machine
	// it shares with what it measures.
	ProcessCPUSeconds float64 `json:"process_cpu_seconds,omitempty"`
}

// SummaryConfig is the part of Config a summary records (not the token seed).
type SummaryConfig struct {
	Frontends     []string `json:"frontends"`
	Devices       int      `json:"devices"`
	DeviceOffset  int      `json:"device_offset,omitempty"`
	Rate          float64  `json:"rate"`
	FrameReadings int      `json:"frame_readings"`
	Window        int      `json:"window"`
	Readings      int      `json:"readings,omitempty"`
	Duration      string   `json:"duration,omitempty"`
	Drain         string   `json:"drain,omitempty"`
	JSON          bool     `json:"json"`
	ConnectRate   float64  `json:"connect_rate,omitempty"`
	BackoffMin    string   `json:"backoff_min"`
	BackoffMax    string   `json:"backoff_max"`
	LocalAddrs    []string `json:"local_addrs,omitempty"`
	Outbox        int      `json:"outbox"`
	EventRate     float64  `json:"event_rate"`
	StampedeEvery string   `json:"stampede_every,omitempty"`
	CommandDelay  string   `json:"command_delay,omitempty"`
	CommandFails  float64  `json:"command_failure_rate,omitempty"`
}

// LatencyMs is a Latency in milliseconds.
type LatencyMs struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

func latencyMs(l Latency) LatencyMs {
	return LatencyMs{Count: l.Count, P50: ms(l.P50), P90: ms(l.P90), P99: ms(l.P99), P999: ms(l.P999),
		Max: ms(l.Max), Mean: ms(l.Mean)}
}

func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

func durStr(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// Summary returns the fleet's summary: final once Done is closed, a running one before.
func (f *Fleet) Summary() Summary {
	s := f.Stats()
	c := f.cfg
	sum := Summary{
		Config: SummaryConfig{
			Frontends: f.urls, Devices: c.Devices, DeviceOffset: c.DeviceOffset, Rate: c.Rate,
			FrameReadings: c.FrameReadings, Window: c.Window, Readings: c.Readings,
			Duration: durStr(c.Duration), Drain: durStr(c.Drain), JSON: c.JSON, ConnectRate: c.ConnectRate,
			BackoffMin: c.BackoffMin.String(), BackoffMax: c.BackoffMax.String(), LocalAddrs: c.LocalAddrs,
			Outbox: c.Outbox, EventRate: max(0, c.EventRate), StampedeEvery: durStr(c.StampedeEvery),
			CommandDelay: durStr(c.CommandDelay), CommandFails: c.CommandFailureRate,
		},
		Commands:        f.commandStats(),
		Seconds:         math.Round(s.Elapsed.Seconds()*1000) / 1000,
		Devices:         s.Devices,
		DevicesDone:     s.DevicesDone,
		Connected:       s.Connected,
		Connects:        s.Connects,
		ConnectFailures: s.ConnectFailures,
		Disconnects:     s.Disconnects,
		Generated:       s.Generated,
		Sent:            s.Sent,
		Resent:          s.Resent,
		FramesSent:      s.FramesSent,
		BytesSent:       s.BytesSent,
		Acked:           s.Acked,
		Unacked:         s.Outbox,
		OutboxDrops:     s.OutboxDrops,
		Errors:          s.Errors,
		Stampedes:       s.Stampedes,
		TLSFull:         s.TLSFull,
		TLSResumed:      s.TLSResumed,
		AckLatencyMs:    latencyMs(s.AckLatency),
		WarmupSeconds:   c.Warmup.Seconds(),
	}
	f.mu.Lock()
	sum.Start = f.epoch
	warm := f.warm
	f.mu.Unlock()
	if warm != nil {
		steady := latencyMs(f.c.latency.snapshot().sub(warm).latency())
		sum.AckLatencySteadyMs = &steady
	}
	if sec := s.Elapsed.Seconds(); sec > 0 {
		sum.SentPerSecond = math.Round(float64(s.Sent)/sec*10) / 10
		sum.AckedPerSecond = math.Round(float64(s.Acked)/sec*10) / 10
	}
	return sum
}

// Progress writes a line about the fleet to w every interval, and a last one when the fleet
// has stopped; then it returns. Rates and latency percentiles are over the interval:
//
//	sim 10s: connected 100/100, sent 100/s, acked 100/s, in-flight 3, outbox 3, ack p50 1.2ms p99 4.1ms, drops 0, errors 0
//
// Run it in its own goroutine; it returns only once the fleet is done.
func (f *Fleet) Progress(w io.Writer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	prev := f.Stats()
	prevHist := f.c.latency.snapshot()
	line := func() {
		s := f.Stats()
		h := f.c.latency.snapshot()
		lat := h.sub(prevHist).latency()
		dt := (s.Elapsed - prev.Elapsed).Seconds()
		rate := func(now, before uint64) float64 {
			if dt <= 0 {
				return 0
			}
			return float64(now-before) / dt
		}
		fmt.Fprintf(w, "sim %s: connected %d/%d, sent %.0f/s, acked %.0f/s, in-flight %d, outbox %d, ack p50 %s p99 %s, drops %d, errors %d\n",
			s.Elapsed.Round(time.Second), s.Connected, s.Devices, rate(s.Sent, prev.Sent), rate(s.Acked, prev.Acked),
			s.InFlight, s.Outbox, roundDur(lat.P50), roundDur(lat.P99), s.OutboxDrops, s.Errors)
		if s.Stampedes > prev.Stampedes {
			fmt.Fprintf(w, "sim %s: stampede (%d so far)\n", s.Elapsed.Round(time.Second), s.Stampedes)
		}
		prev, prevHist = s, h
	}
	for {
		select {
		case <-f.done:
			line()
			return
		case <-t.C:
			line()
		}
	}
}

// roundDur rounds d to three significant figures or so, for display.
func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// collector exposes a fleet's counters as drover_sim_* metrics.
type collector struct{ f *Fleet }

var (
	descConnected  = prometheus.NewDesc("drover_sim_devices_connected", "Simulated devices connected now.", nil, nil)
	descAcking     = prometheus.NewDesc("drover_sim_devices_acking", "Simulated devices connected whose current connection has had an ack.", nil, nil)
	descTLS        = prometheus.NewDesc("drover_sim_tls_handshakes_total", "TLS handshakes of wss:// connections, by kind (full, resumed).", []string{"kind"}, nil)
	descConnects   = prometheus.NewDesc("drover_sim_connects_total", "Successful WebSocket upgrades of simulated devices.", nil, nil)
	descConnFail   = prometheus.NewDesc("drover_sim_connect_failures_total", "Failed connection attempts, by cause.", []string{"cause"}, nil)
	descDisconn    = prometheus.NewDesc("drover_sim_disconnects_total", "Connections ended other than by the device, by cause (close code, error).", []string{"cause"}, nil)
	descReadings   = prometheus.NewDesc("drover_sim_readings_total", "Readings by what happened to them: generated, sent (resends included), resent, acked, dropped (outbox full).", []string{"event"}, nil)
	descInFlight   = prometheus.NewDesc("drover_sim_readings_in_flight", "Readings sent on current connections and not yet acked.", nil, nil)
	descOutbox     = prometheus.NewDesc("drover_sim_outbox_readings", "Readings held in device outboxes, not yet acked.", nil, nil)
	descErrors     = prometheus.NewDesc("drover_sim_errors_total", "Connection failures, protocol violations, downlink errors and local failures.", nil, nil)
	descStampedes  = prometheus.NewDesc("drover_sim_stampedes_total", "Stampedes: every simulated device dropping its connection at once.", nil, nil)
	descAckLatency = prometheus.NewDesc("drover_sim_ack_latency_seconds", "Time from a reading's first write to the socket to the ack covering it.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descAcking, descTLS, descConnects, descConnFail, descDisconn, descReadings,
		descInFlight, descOutbox, descErrors, descStampedes, descAckLatency} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.f.Stats()
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, float64(s.Connected))
	ch <- prometheus.MustNewConstMetric(descAcking, prometheus.GaugeValue, float64(s.Acking))
	ch <- prometheus.MustNewConstMetric(descTLS, prometheus.CounterValue, float64(s.TLSFull), "full")
	ch <- prometheus.MustNewConstMetric(descTLS, prometheus.CounterValue, float64(s.TLSResumed), "resumed")
	ch <- prometheus.MustNewConstMetric(descConnects, prometheus.CounterValue, float64(s.Connects))
	for k, v := range s.ConnectFailures {
		ch <- prometheus.MustNewConstMetric(descConnFail, prometheus.CounterValue, float64(v), k)
	}
	for k, v := range s.Disconnects {
		ch <- prometheus.MustNewConstMetric(descDisconn, prometheus.CounterValue, float64(v), k)
	}
	for ev, v := range map[string]uint64{"generated": s.Generated, "sent": s.Sent, "resent": s.Resent,
		"acked": s.Acked, "dropped": s.OutboxDrops} {
		ch <- prometheus.MustNewConstMetric(descReadings, prometheus.CounterValue, float64(v), ev)
	}
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(s.InFlight))
	ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(s.Outbox))
	ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(s.Errors))
	ch <- prometheus.MustNewConstMetric(descStampedes, prometheus.CounterValue, float64(s.Stampedes))
	h := c.f.c.latency.snapshot()
	ch <- prometheus.MustNewConstSummary(descAckLatency, h.total, float64(h.sum)/1e9, map[float64]float64{
		0.5: h.quantile(0.5).Seconds(), 0.9: h.quantile(0.9).Seconds(), 0.99: h.quantile(0.99).Seconds(),
	})
}

// TimelinePoint is one line of a fleet's timeline: what it did over one interval, for plots.
// Counts are over the interval; rates and latency percentiles too.
type TimelinePoint struct {
	// T is the end of the interval, in seconds since the fleet started; Seconds its length.
	T       float64 `json:"t"`
	Seconds float64 `json:"seconds"`
	// Sent (resends included) and Acked count readings.
	Sent           uint64  `json:"sent"`
	Acked          uint64  `json:"acked"`
	SentPerSecond  float64 `json:"sent_per_second"`
	AckedPerSecond float64 `json:"acked_per_second"`
	// AckP50Ms and AckP99Ms are over the readings acked in the interval (0 when none was).
	AckP50Ms  float64 `json:"ack_p50_ms"`
	AckP99Ms  float64 `json:"ack_p99_ms"`
	Connected int64   `json:"connected"`
	// Acking is how many connected devices have had an ack on their current connection.
	Acking int64 `json:"acking"`
}

// Timeline writes a TimelinePoint to w as a JSON line every interval, and a last one when the
// fleet has stopped; then it returns, or at the first write error. The lines' Acked add up to
// the final Summary's Acked. Run it in its own goroutine, like Progress.
func (f *Fleet) Timeline(w io.Writer, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	// From zero, not from now: the lines add up to the totals even when the fleet started first.
	var prev Stats
	prevHist := &histSnapshot{}
	enc := json.NewEncoder(w)
	line := func() error {
		s := f.Stats()
		h := f.c.latency.snapshot()
		lat := h.sub(prevHist).latency()
		p := TimelinePoint{
			T:       math.Round(s.Elapsed.Seconds()*1000) / 1000,
			Seconds: math.Round((s.Elapsed-prev.Elapsed).Seconds()*1000) / 1000,
			Sent:    s.Sent - prev.Sent, Acked: s.Acked - prev.Acked,
			AckP50Ms: ms(lat.P50), AckP99Ms: ms(lat.P99), Connected: s.Connected, Acking: s.Acking,
		}
		if dt := (s.Elapsed - prev.Elapsed).Seconds(); dt > 0 {
			p.SentPerSecond = math.Round(float64(p.Sent)/dt*10) / 10
			p.AckedPerSecond = math.Round(float64(p.Acked)/dt*10) / 10
		}
		prev, prevHist = s, h
		if err := enc.Encode(p); err != nil {
			return fmt.Errorf("write timeline: %w", err)
		}
		return nil
	}
	for {
		select {
		case <-f.done:
			return line()
		case <-t.C:
			if err := line(); err != nil {
				return err
			}
		}
	}
}
