// Command natspeer is drover's peer benchmark on NATS JetStream: it publishes messages of a
// drover frame's size from as many connections as drover's benchmark has devices, each with a
// bounded window of unacknowledged publishes (as a drover device has), and counts only the
// messages JetStream acknowledged (PubAck: stored in the stream under its sync policy).
// scripts/bench-e2e.sh runs it against a nats-server with `sync_interval: always` (fsync before
// each PubAck, as drover's queues do) and with the default interval.
//
// It is its own Go module so that drover's module does not depend on NATS.
//
//	go run . -url nats://127.0.0.1:4222 -publishers 1000 -size 1700 -readings 50 -window 8 \
//		-duration 20s -summary nats.json -timeline nats-timeline.jsonl
//
// `natspeer wsconns` is the peer of the connection benchmarks instead: NATS client connections
// to nats-server's WebSocket listener, held idle, for memory per connection and connect rate
// (wsconns.go, scripts/bench-conns.sh).
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// config is natspeer's flags.
type config struct {
	url        string
	publishers int
	size       int
	readings   int
	window     int
	duration   time.Duration
	stream     string
	maxBytes   int64
	label      string
	summary    string
	timeline   string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "wsconns" {
		os.Exit(wsconnsMain(os.Args[2:]))
	}
	var c config
	flag.StringVar(&c.url, "url", nats.DefaultURL, "the nats-server's `url`")
	flag.IntVar(&c.publishers, "publishers", 1000, "publishing connections (drover: devices)")
	flag.IntVar(&c.size, "size", 1700, "message size in `bytes` (drover: a frame's encoded size)")
	flag.IntVar(&c.readings, "readings", 50, "readings a message stands for (drover: readings per frame)")
	flag.IntVar(&c.window, "window", 8, "unacknowledged publishes per connection (drover: the device window)")
	flag.DurationVar(&c.duration, "duration", 20*time.Second, "how long to publish")
	flag.StringVar(&c.stream, "stream", "BENCH", "the stream to create (subjects bench.>)")
	flag.Int64Var(&c.maxBytes, "max-bytes", 2<<30, "the stream's size limit in `bytes` (older messages discarded)")
	flag.StringVar(&c.label, "label", "", "a label for the summary (e.g. the server's sync policy)")
	flag.StringVar(&c.summary, "summary", "-", "write the JSON summary to this `file` (- for standard output)")
	flag.StringVar(&c.timeline, "timeline", "", "write a JSON line per second to this `file` (empty for none)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "natspeer:", err)
		os.Exit(1)
	}
}

// Summary is what natspeer writes at the end.
type Summary struct {
	Label      string  `json:"label,omitempty"`
	URL        string  `json:"url"`
	Publishers int     `json:"publishers"`
	Connected  int     `json:"connected"`
	Size       int     `json:"message_bytes"`
	Readings   int     `json:"readings_per_message"`
	Window     int     `json:"window"`
	Seconds    float64 `json:"seconds"`
	// Published counts publishes sent; Acked those JetStream acknowledged; Errors those it
	// refused or that timed out.
	Published uint64 `json:"published"`
	Acked     uint64 `json:"acked"`
	Errors    uint64 `json:"errors"`
	FirstErr  string `json:"first_error,omitempty"`
	// AckedPerSecond is messages; AckedReadingsPerSecond is AckedPerSecond × Readings.
	AckedPerSecond         float64   `json:"acked_per_second"`
	AckedReadingsPerSecond float64   `json:"acked_readings_per_second"`
	AckLatencyMs           LatencyMs `json:"ack_latency_ms"`
}

// LatencyMs is a distribution of publish-to-PubAck times, in milliseconds.
type LatencyMs struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Point is one timeline line: messages acknowledged in one second, as readings.
type Point struct {
	T                      float64 `json:"t"`
	Acked                  uint64  `json:"acked"`
	AckedReadingsPerSecond float64 `json:"acked_readings_per_second"`
	AckP50Ms               float64 `json:"ack_p50_ms"`
	AckP99Ms               float64 `json:"ack_p99_ms"`
}

// recorder collects publish-to-ack times; the timeline takes its samples every second.
type recorder struct {
	mu       sync.Mutex
	all, cur []time.Duration
}

func (r *recorder) add(d time.Duration) {
	r.mu.Lock()
	r.all = append(r.all, d)
	r.cur = append(r.cur, d)
	r.mu.Unlock()
}

func (r *recorder) interval() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.cur
	r.cur = nil
	return s
}

func latency(s []time.Duration) LatencyMs {
	if len(s) == 0 {
		return LatencyMs{}
	}
	slices.Sort(s)
	q := func(p float64) float64 {
		i := max(int(math.Ceil(p*float64(len(s))))-1, 0)
		return ms(s[i])
	}
	return LatencyMs{Count: uint64(len(s)), P50: q(0.5), P90: q(0.9), P99: q(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)) / 1000 }

// inflight is one publish awaiting its PubAck.
type inflight struct {
	f  jetstream.PubAckFuture
	at time.Time
}

func run(ctx context.Context, c config) error {
	if c.publishers < 1 || c.size < 1 || c.window < 1 || c.readings < 1 {
		return errors.New("-publishers, -size, -window and -readings must be at least 1")
	}
	// The stream, from a connection of its own.
	admin, err := nats.Connect(c.url, nats.Name("natspeer-admin"))
	if err != nil {
		return fmt.Errorf("connect %s: %w", c.url, err)
	}
	defer admin.Close()
	ajs, err := jetstream.New(admin)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = ajs.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name: c.stream, Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage,
		MaxBytes: c.maxBytes, Discard: jetstream.DiscardOld, Replicas: 1,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("create stream %s: %w", c.stream, err)
	}

	payload := make([]byte, c.size)
	_, _ = rand.Read(payload) // incompressible, like protobuf readings

	// Connect every publisher first, then start them together.
	conns := make([]*nats.Conn, 0, c.publishers)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	jss := make([]jetstream.JetStream, 0, c.publishers)
	for i := range c.publishers {
		nc, err := nats.Connect(c.url, nats.Name("natspeer-"+strconv.Itoa(i)))
		if err != nil {
			return fmt.Errorf("connect publisher %d: %w", i, err)
		}
		conns = append(conns, nc)
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*c.window),
			jetstream.WithPublishAsyncTimeout(30*time.Second))
		if err != nil {
			return fmt.Errorf("jetstream of publisher %d: %w", i, err)
		}
		jss = append(jss, js)
	}

	var (
		published, acked, errs atomic.Uint64
		firstErr               atomic.Value
		rec                    recorder
		wg                     sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(c.duration)
	pctx, pcancel := context.WithDeadline(ctx, end)
	defer pcancel()
	for i, js := range jss {
		subj := "bench." + strconv.Itoa(i)
		futs := make(chan inflight, c.window-1) // + the one the collector waits on = window
		wg.Go(func() {                          // collector: in publish order
			for p := range futs {
				select {
				case <-p.f.Ok():
					acked.Add(1)
					rec.add(time.Since(p.at))
				case err := <-p.f.Err():
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
		wg.Go(func() { // producer
			defer close(futs)
			for pctx.Err() == nil {
				at := time.Now()
				f, err := js.PublishAsync(subj, payload)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					select {
					case <-pctx.Done():
					case <-time.After(10 * time.Millisecond):
					}
					continue
				}
				published.Add(1)
				select {
				case futs <- inflight{f, at}:
				case <-pctx.Done():
					futs <- inflight{f, at} // still collect it: the collector drains futs
					return
				}
			}
		})
	}

	// The timeline runs until every publish is settled, as the simulator's does, so that its
	// lines add up to the summary's acked.
	settled := make(chan struct{})
	var tlErr error
	tlDone := make(chan struct{})
	go func() {
		defer close(tlDone)
		var enc *json.Encoder
		if c.timeline != "" {
			f, err := os.Create(c.timeline)
			if err != nil {
				tlErr = fmt.Errorf("create timeline: %w", err)
				return
			}
			defer f.Close()
			enc = json.NewEncoder(f)
		}
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var (
			prev     uint64
			prevTime = start
		)
		line := func(now time.Time) error {
			n := acked.Load()
			lat := latency(rec.interval())
			dt := now.Sub(prevTime).Seconds()
			p := Point{T: math.Round(now.Sub(start).Seconds()*1000) / 1000, Acked: n - prev,
				AckP50Ms: lat.P50, AckP99Ms: lat.P99}
			if dt > 0 {
				p.AckedReadingsPerSecond = math.Round(float64((n-prev)*uint64(c.readings))/dt*10) / 10
			}
			prev, prevTime = n, now
			if enc == nil {
				return nil
			}
			if err := enc.Encode(p); err != nil {
				return fmt.Errorf("write timeline: %w", err)
			}
			return nil
		}
		for {
			select {
			case <-settled:
				tlErr = line(time.Now())
				return
			case now := <-t.C:
				if tlErr = line(now); tlErr != nil {
					return
				}
			}
		}
	}()
	wg.Wait() // every publish sent before the end is acked, failed or timed out
	close(settled)
	<-tlDone
	if tlErr != nil {
		return tlErr
	}

	// The rate is over the publishing time; acks of the last window arrive just after it.
	sec := time.Since(start).Seconds()
	connected := 0
	for _, nc := range conns {
		if nc.IsConnected() {
			connected++
		}
	}
	s := Summary{
		Label: c.label, URL: c.url, Publishers: c.publishers, Connected: connected, Size: c.size,
		Readings: c.readings, Window: c.window, Seconds: math.Round(sec*1000) / 1000,
		Published: published.Load(), Acked: acked.Load(), Errors: errs.Load(),
		AckLatencyMs: latency(rec.all),
	}
	if e, ok := firstErr.Load().(string); ok {
		s.FirstErr = e
	}
	s.AckedPerSecond = math.Round(float64(s.Acked)/sec*10) / 10
	s.AckedReadingsPerSecond = math.Round(float64(s.Acked*uint64(c.readings))/sec*10) / 10
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode summary: %w", err)
	}
	b = append(b, '\n')
	if c.summary == "-" {
		_, err = os.Stdout.Write(b)
	} else {
		err = os.WriteFile(c.summary, b, 0o644)
	}
	if err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	if s.Acked == 0 {
		return fmt.Errorf("nothing acknowledged (first error: %s)", s.FirstErr)
	}
	return nil
}
