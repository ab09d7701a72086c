// Command cmdlat measures the command round trip through a running drover: it posts commands to
// simulated devices through the API at a fixed rate (open loop: a slow answer does not slow the
// offered load), each with ?wait= so that the answer comes with the device's result, and each
// carrying the time of the call in the parameter sim.BenchSentParam, from which the simulated
// device (drover sim, same host) records how long the command took to reach it.
// scripts/bench-commands.sh runs it against real processes.
//
//	cmdlat -api http://127.0.0.1:8090 -key-file data/api-admin-key -register -devices 10000
//	cmdlat -api http://127.0.0.1:8090 -key-file data/api-admin-key -devices 10000 -rate 500 -duration 30s
//
// -register imports the simulated fleet (token hashes from $DROVER_SIM_TOKEN_SEED, as drover sim
// derives them) and exits. The summary (JSON) gives the call → result latency of the commands
// that ended succeeded within the wait; the call → device latency is in drover sim's summary
// (commands.latency_ms).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

func main() {
	var (
		api      = flag.String("api", "http://127.0.0.1:8090", "the control plane's base `url`")
		keyFile  = flag.String("key-file", "", "`file` holding an API key of an operator of every fleet (never on the command line)")
		register = flag.Bool("register", false, "import the simulated fleet and exit")
		devices  = flag.Int("devices", 10000, "simulated devices (`number`), ids as drover sim makes them")
		prefix   = flag.String("prefix", "dev-", "device id `prefix`, as drover sim's -id-prefix")
		rate     = flag.Float64("rate", 500, "commands per second (`number`)")
		duration = flag.Duration("duration", 30*time.Second, "how long to post")
		wait     = flag.Duration("wait", 5*time.Second, "?wait= of each command")
		ttl      = flag.Duration("ttl", time.Minute, "time to live of each command")
		warmup   = flag.Duration("warmup", 3*time.Second, "commands posted during this first part are not counted, here nor in the devices' call → receipt latency (they carry no call time)")
		summary  = flag.String("summary", "-", "write the JSON summary to this `file` (- for standard output)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := os.ReadFile(*keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cmdlat: -key-file:", err)
		os.Exit(2)
	}
	c := &client{base: strings.TrimSuffix(*api, "/"), key: strings.TrimSpace(string(b)),
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2000, MaxConnsPerHost: 0}}}
	if *register {
		err = c.register(ctx, *devices, *prefix)
	} else {
		var s Summary
		s, err = c.run(ctx, *devices, *prefix, *rate, *duration, *wait, *ttl, *warmup)
		if err == nil {
			err = writeSummary(*summary, s)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cmdlat:", err)
		os.Exit(1)
	}
}

type client struct {
	base, key string
	http      *http.Client
}

func (c *client) do(ctx context.Context, method, path string, body any) (int, []byte, error) {
	bb, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(bb))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	return resp.StatusCode, rb, err
}

// register imports the fleet drover sim simulates, 10,000 devices a request.
func (c *client) register(ctx context.Context, devices int, prefix string) error {
	cfg := sim.DefaultConfig()
	cfg.Devices, cfg.IDPrefix, cfg.TokenSeed = devices, prefix, os.Getenv("DROVER_SIM_TOKEN_SEED")
	all := sim.Devices(cfg)
	for len(all) > 0 {
		n := min(len(all), 10000)
		rows := make([]map[string]any, n)
		for i, d := range all[:n] {
			rows[i] = map[string]any{"id": d.ID, "fleet": d.Fleet, "class": d.Class, "region": d.Region, "token_sha256": d.TokenSHA256}
		}
		st, b, err := c.do(ctx, "POST", "/v1/imports/devices?mode=upsert&create_missing=true", map[string]any{"devices": rows})
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		if st != http.StatusOK {
			return fmt.Errorf("import: %d %s", st, b)
		}
		all = all[n:]
	}
	return nil
}

// Summary is what cmdlat writes.
type Summary struct {
	Rate     float64 `json:"rate"`
	Devices  int     `json:"devices"`
	Seconds  float64 `json:"seconds"`
	Wait     string  `json:"wait"`
	Posted   uint64  `json:"posted"`
	Measured int     `json:"measured"`
	// Statuses counts answers by HTTP status ("error" for no answer); States the final state
	// of the answered commands ("timeout" when the wait ended first).
	Statuses map[string]uint64 `json:"statuses"`
	States   map[string]uint64 `json:"states"`
	// CallToResultMs is from the call to the answer of commands that ended succeeded within
	// the wait, after the warm-up.
	CallToResultMs LatencyMs `json:"call_to_result_ms"`
	// PerSecond is the same, per second of the run by the call's start (index 0: the first
	// second after the warm-up): whether a tail is spread over the run (queueing) or comes in
	// bursts (a checkpoint, a vacuum, a collection).
	PerSecond []LatencyMs `json:"call_to_result_ms_per_second"`
}

// LatencyMs are percentiles in milliseconds.
type LatencyMs struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

func percentiles(d []time.Duration) LatencyMs {
	if len(d) == 0 {
		return LatencyMs{}
	}
	slices.Sort(d)
	q := func(p float64) float64 {
		i := min(len(d)-1, int(p*float64(len(d))))
		return float64(d[i].Microseconds()) / 1000
	}
	return LatencyMs{Count: len(d), P50: q(.5), P90: q(.9), P99: q(.99), P999: q(.999), Max: q(1)}
}

// run posts at rate for duration and waits for every answer.
func (c *client) run(ctx context.Context, devices int, prefix string, rate float64, duration, wait, ttl, warmup time.Duration) (Summary, error) {
	if rate <= 0 || devices <= 0 {
		return Summary{}, errors.New("-rate and -devices must be > 0")
	}
	s := Summary{Rate: rate, Devices: devices, Wait: wait.String(), Statuses: map[string]uint64{}, States: map[string]uint64{}}
	var (
		mu      sync.Mutex
		lat     []time.Duration
		perSec  [][]time.Duration
		posted  atomic.Uint64
		wg      sync.WaitGroup
		started = time.Now()
	)
	path := func(i int) string {
		return "/v1/devices/" + sim.DeviceID(prefix, i) + "/commands?wait=" + wait.String()
	}
	interval := time.Duration(float64(time.Second) / rate)
	next := started
	for time.Since(started) < duration && ctx.Err() == nil {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		posted.Add(1)
		measure := time.Since(started) >= warmup
		wg.Go(func() {
			at := time.Now()
			// Only measured commands carry their call time: the devices' call → receipt
			// latency (drover sim's commands.latency_ms) then covers the same commands,
			// after the warm-up, as call_to_result_ms here.
			params := map[string]string{"warmup": "1"}
			if measure {
				params = map[string]string{sim.BenchSentParam: strconv.FormatInt(at.UnixNano(), 10)}
			}
			body := map[string]any{"name": "bench", "ttl": ttl.String(), "params": params}
			st, b, err := c.do(ctx, "POST", path(rand.IntN(devices)), body)
			took := time.Since(at)
			var out struct{ State string }
			key := strconv.Itoa(st)
			if err != nil {
				key = "error"
			} else {
				_ = json.Unmarshal(b, &out)
			}
			mu.Lock()
			defer mu.Unlock()
			s.Statuses[key]++
			if out.State != "" {
				state := out.State
				if state != "succeeded" && state != "failed" && state != "expired" && state != "cancelled" {
					state = "timeout"
				}
				s.States[state]++
			}
			if measure && out.State == "succeeded" {
				lat = append(lat, took)
				sec := int((at.Sub(started) - warmup) / time.Second)
				for len(perSec) <= sec {
					perSec = append(perSec, nil)
				}
				perSec[sec] = append(perSec[sec], took)
			}
		})
	}
	wg.Wait()
	s.Seconds = time.Since(started).Seconds()
	s.Posted = posted.Load()
	s.Measured = len(lat)
	s.CallToResultMs = percentiles(lat)
	for _, d := range perSec {
		s.PerSecond = append(s.PerSecond, percentiles(d))
	}
	return s, nil
}

func writeSummary(path string, s Summary) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
