package router

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// testLogger logs to stderr when DROVER_TEST_LOG is set (debug level with
// DROVER_TEST_LOG=debug), else nowhere.
func testLogger(name string) *slog.Logger {
	v := os.Getenv("DROVER_TEST_LOG")
	if v == "" {
		return nil
	}
	lvl := slog.LevelInfo
	if v == "debug" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("test_component", name)
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// noLeaks fails the test if goroutines of drover or zmq4 outlive it. Call
// it first, so that its cleanup runs after every other one.
func noLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		var stacks string
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var leaked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "zmq4.(*pubMWriter).run") {
					// zmq4 v0.17.0 never stops a PUB socket's writer
					// goroutine (socket.Close does not close its
					// pubMWriter): one parked goroutine per PUB socket
					// ever made, holding no connection. Upstream's leak.
					continue
				}
				if strings.Contains(g, "go-zeromq/zmq4") || strings.Contains(g, "drover/internal/forward") ||
					strings.Contains(g, "drover/internal/clusterlink") ||
					(strings.Contains(g, "drover/router.") && !strings.Contains(g, "testing.tRunner")) ||
					strings.Contains(g, "drover/queue.") {
					leaked = append(leaked, g)
				}
			}
			if len(leaked) == 0 {
				return
			}
			stacks = strings.Join(leaked, "\n\n")
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked:\n%s", len(leaked), stacks)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// testConfig returns a router config on a free loopback port, queue in dir.
func testConfig(dir, id string) Config {
	cfg := DefaultConfig()
	cfg.Listen = "tcp://127.0.0.1:0"
	cfg.LivePub = "tcp://127.0.0.1:0"
	cfg.StoreListen = "tcp://127.0.0.1:0"
	cfg.QueueDir = dir
	cfg.ID = id
	cfg.Links = testLinks
	return cfg
}

// testLinks is the cluster key of the package's tests: routers, drainers
// and the test's own peers talk mutual TLS 1.3, as in production.
var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

// linkEndpoint turns a router endpoint into the one a test peer of role
// dials on link, with the test's cluster key (or cfg, when given).
func linkEndpoint(t testing.TB, role clusterlink.Role, link clusterlink.Link, endpoint string, cfg ...clusterlink.Config) string {
	t.Helper()
	c := testLinks
	if len(cfg) > 0 {
		c = cfg[0]
	}
	sec, err := clusterlink.New(c, role, "test-"+string(role), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sec.Close)
	ep, err := sec.Endpoint(link, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// running is a Router run in a goroutine of the test.
type running struct {
	*Router
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startRouter(t testing.TB, cfg Config, opts ...func(*Router)) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	r, err := New(cfg, testLogger(cfg.ID), reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &running{Router: r, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	t.Cleanup(func() { rr.stop(t) })
	deadline := time.Now().Add(10 * time.Second)
	for r.Ready() != nil {
		select {
		case err := <-rr.done:
			t.Fatalf("router Run returned before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("router not ready: %v", r.Ready())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return rr
}

func (rr *running) stop(t testing.TB) {
	t.Helper()
	rr.once.Do(func() {
		rr.cancel()
		select {
		case err := <-rr.done:
			if err != nil {
				t.Errorf("router Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("router did not stop")
		}
	})
}

// drainer is a forward.Drainer run in a goroutine of the test.
type drainer struct {
	*forward.Drainer
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// testDrainerConfig has short timers, so that tests fail over quickly.
func testDrainerConfig(sender string, routers ...string) forward.DrainerConfig {
	return forward.DrainerConfig{
		Sender:        sender,
		Routers:       routers,
		MaxBatchBytes: 16 << 10,
		MaxInflight:   4,
		AckTimeout:    2 * time.Second,
		Heartbeat:     50 * time.Millisecond,
		DownAfter:     400 * time.Millisecond,
		Links:         testLinks,
	}
}

func startDrainer(t testing.TB, cfg forward.DrainerConfig, q *queue.Queue) *drainer {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := forward.NewDrainer(cfg, q, testLogger(cfg.Sender), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dd := &drainer{Drainer: d, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { dd.done <- d.Run(ctx) }()
	t.Cleanup(func() { dd.stop(t) })
	return dd
}

func (d *drainer) stop(t testing.TB) {
	t.Helper()
	d.once.Do(func() {
		d.cancel()
		select {
		case err := <-d.done:
			if err != nil {
				t.Errorf("drainer Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("drainer did not stop")
		}
	})
}

// metric returns the value of a counter or gauge, summed over its labels
// matching want (name="value" pairs), from reg.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

var _ = testutil.ToFloat64 // keep the import for ad-hoc debugging

// frontend is a frontend queue and the entries appended to it.
type frontend struct {
	q    *queue.Queue
	mu   sync.Mutex
	seqs map[uint64]int // queue sequence → entry index
	n    int
}

func openFrontend(t testing.TB, dir string, sync queue.SyncPolicy) *frontend {
	t.Helper()
	q, err := queue.Open(dir, queue.Options{Name: "frontend", Sync: sync, MaxBytes: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return &frontend{q: q, seqs: map[uint64]int{}}
}

// recordsPerEntry and the record size make entries as a frontend writes
// them: one device frame of 10 readings of about 80 bytes each.
const recordsPerEntry = 10

// makeEntry returns entry k: a Batch of records whose readings carry
// sequences k*recordsPerEntry+j, so that content can be checked.
func makeEntry(k int) []byte {
	b := &telemetry.Batch{}
	for j := range recordsPerEntry {
		lat, lon := int32(457640434+k), int32(48356728-j)
		alt, hdg, spd, temp, rpm, fuel := float32(173.4), float32(187.25), float32(87.6), float32(88.5), float32(1450), float32(63.2)
		odo := 412873.4 + float64(k)
		b.Records = append(b.Records, &telemetry.Record{
			DeviceId:   fmt.Sprintf("dev-%05d", k%1000),
			ReceivedMs: 1_763_899_200_000 + int64(k),
			Reading: &telemetry.Reading{
				Seq: uint64(k*recordsPerEntry + j + 1), TimeMs: 1_763_899_200_000 + int64(k),
				LatE7: &lat, LonE7: &lon, AltitudeM: &alt, HeadingDeg: &hdg, SpeedKmh: &spd,
				EngineTempC: &temp, EngineRpm: &rpm, FuelLevelPct: &fuel, OdometerKm: &odo,
			},
		})
	}
	out, err := proto.Marshal(b)
	if err != nil {
		panic(err)
	}
	return out
}

// appendN appends n entries in Append calls of 1..maxPer entries.
func (f *frontend) appendN(t testing.TB, n, maxPer int, r *rand.Rand) {
	t.Helper()
	for n > 0 {
		k := min(n, 1+r.IntN(maxPer))
		f.mu.Lock()
		base := f.n
		f.n += k
		f.mu.Unlock()
		ents := make([][]byte, k)
		for i := range ents {
			ents[i] = makeEntry(base + i)
		}
		seq, err := f.q.Append(context.Background(), ents...)
		if err != nil {
			t.Errorf("frontend append: %v", err)
			return
		}
		f.mu.Lock()
		for i := range ents {
			f.seqs[seq+uint64(i)] = base + i
		}
		f.mu.Unlock()
		n -= k
	}
}

func (f *frontend) depth() int64 {
	n, _ := f.q.Depth()
	return n
}

// stored is what router queues hold, per frontend sequence.
type stored struct {
	count  map[uint64]int            // of the sender asked for
	others map[string]map[uint64]int // of other senders
	byDir  []map[uint64]bool
}

// readStored opens each stopped router's queue directory, reads every entry
// without removing it, checks that each decodes as the Batch of the
// frontend entries it names, and counts the sequences.
func readStored(t testing.TB, f *frontend, sender string, dirs ...string) stored {
	t.Helper()
	s := stored{count: map[uint64]int{}, others: map[string]map[uint64]int{}}
	for _, dir := range dirs {
		in := map[uint64]bool{}
		scanStored(t, dir, func(si forward.StoredInfo, data []byte) {
			if si.Sender == sender {
				checkStoredEntry(t, f, sender, data, s.count, in)
				return
			}
			if s.others[si.Sender] == nil {
				s.others[si.Sender] = map[uint64]int{}
			}
			checkStoredEntry(t, f, si.Sender, data, s.others[si.Sender], map[uint64]bool{})
		})
		s.byDir = append(s.byDir, in)
	}
	return s
}

// scanStored calls fn with every entry of a stopped router's main queue in
// dir, in the queue's order, without removing any.
func scanStored(t testing.TB, dir string, fn func(si forward.StoredInfo, data []byte)) {
	t.Helper()
	q, err := queue.Open(dir, queue.Options{Name: "check", MaxRecordBytes: recordBytes}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) == 0 {
			return
		}
		for _, e := range b.Entries {
			si, err := forward.ParseStored(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			fn(si, e.Data)
		}
	}
}

func checkStoredEntry(t testing.TB, f *frontend, sender string, data []byte, count map[uint64]int, in map[uint64]bool) {
	t.Helper()
	var b telemetry.Batch
	if err := proto.Unmarshal(data, &b); err != nil {
		t.Fatalf("router entry does not decode: %v", err)
	}
	if b.Sender != sender || b.Seq == 0 || b.LastSeq < b.Seq {
		t.Fatalf("router entry of sender %q range %d..%d", b.Sender, b.Seq, b.LastSeq)
	}
	if want := int(b.LastSeq-b.Seq+1) * recordsPerEntry; len(b.Records) != want {
		t.Fatalf("router entry %d..%d holds %d records, want %d", b.Seq, b.LastSeq, len(b.Records), want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := b.Seq; s <= b.LastSeq; s++ {
		k, ok := f.seqs[s]
		if !ok {
			t.Fatalf("router holds sequence %d, which the frontend never appended", s)
		}
		for j := range recordsPerEntry {
			r := b.Records[int(s-b.Seq)*recordsPerEntry+j]
			if r.Reading.GetSeq() != uint64(k*recordsPerEntry+j+1) {
				t.Fatalf("sequence %d record %d: reading seq %d, want %d", s, j, r.Reading.GetSeq(), k*recordsPerEntry+j+1)
			}
		}
		count[s]++
		in[s] = true
	}
}

// missing returns the frontend sequences no router holds.
func (s stored) missing(f *frontend) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []uint64
	for seq := range f.seqs {
		if s.count[seq] == 0 {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}

// dups returns the sequences stored more than once.
func (s stored) dups() []uint64 {
	var out []uint64
	for seq, n := range s.count {
		if n > 1 {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}
