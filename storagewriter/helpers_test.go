package storagewriter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/storagewriter/lake"
	"github.com/drover-telemetry/drover/telemetry"
)

// fakeRouter is a zmq4 ROUTER speaking the store lane: it answers
// subscribes with pongs, sends batches to the subscriber, records acks.
type fakeRouter struct {
	t    testing.TB
	id   string
	sock zmq4.Socket
	addr string
	done chan struct{}

	mu    sync.Mutex
	peer  []byte
	name  string
	subs  int // subscribes received
	acked *forward.SeqSet
	busy  int
}

func startFakeRouter(t testing.TB, id string) *fakeRouter {
	t.Helper()
	f, err := startFakeRouterAt(t, id, "tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// startFakeRouterAt starts a fake router bound to listen; an error is a
// failed bind (the caller may try another port).
func startFakeRouterAt(t testing.TB, id, listen string) (*fakeRouter, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeRouter{t: t, id: id, sock: zmq4.NewRouter(ctx, zmq4.WithID(zmq4.SocketIdentity(id))),
		done: make(chan struct{}), acked: forward.NewSeqSet(0)}
	sec, err := clusterlink.New(testLinks, clusterlink.RoleRouter, id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sec.Endpoint(clusterlink.LinkStore, listen)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.sock.Listen(ep); err != nil {
		cancel()
		_ = zmqsock.Close(f.sock)
		sec.Close()
		return nil, err
	}
	f.addr = "tcp://" + f.sock.Addr().String()
	go func() {
		defer close(f.done)
		for {
			msg, err := f.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			m, err := forward.Decode(msg.Frames[1:])
			if err != nil {
				t.Errorf("fake router: %v", err)
				continue
			}
			switch m.Type {
			case forward.TypeSubscribe:
				f.mu.Lock()
				f.peer, f.name = msg.Frames[0], m.Name
				f.subs++
				f.mu.Unlock()
				f.reply(msg.Frames[0], forward.Message{Type: forward.TypePong, Nonce: m.Nonce, Incarnation: 7, Router: id})
			case forward.TypeAck:
				f.mu.Lock()
				f.acked.Add(m.First, m.Last)
				f.mu.Unlock()
			case forward.TypeBusy:
				f.mu.Lock()
				f.busy++
				f.mu.Unlock()
			default:
				t.Errorf("fake router: unexpected %s", m.Type)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = zmqsock.Close(f.sock)
		<-f.done
		sec.Close()
	})
	return f, nil
}

// subscribes returns how many subscribes the router received.
func (f *fakeRouter) subscribes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subs
}

// testLinks is the cluster key of the package's tests: writers and fake
// routers talk mutual TLS 1.3, as in production.
var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

func (f *fakeRouter) reply(peer []byte, m forward.Message) {
	frames, err := m.Frames()
	if err != nil {
		f.t.Error(err)
		return
	}
	if err := f.sock.SendMulti(zmq4.NewMsgFrom(append([][]byte{peer}, frames...)...)); err != nil {
		f.t.Logf("fake router send: %v", err)
	}
}

// subscriber returns the last subscriber's name, "" before any.
func (f *fakeRouter) subscriber() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.name
}

func (f *fakeRouter) isAcked(first, last uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acked.Contains(first, last)
}

// send sends one batch of entries first.. to the current subscriber.
func (f *fakeRouter) send(first uint64, entries [][]byte) {
	f.mu.Lock()
	peer := f.peer
	f.mu.Unlock()
	f.reply(peer, forward.Message{Type: forward.TypeBatch, Sender: f.id, First: first, Last: first + uint64(len(entries)) - 1, Entries: entries})
}

// deliver sends a batch and resends it, as a router does, until acked.
func (f *fakeRouter) deliver(first uint64, entries [][]byte) {
	f.t.Helper()
	last := first + uint64(len(entries)) - 1
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		f.send(first, entries)
		for range 100 {
			if f.isAcked(first, last) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	f.t.Fatalf("batch %d..%d not acked", first, last)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// makeRecords returns n records of `devices` devices with sequences from
// firstSeq, in a closed hour.
func makeRecords(n, devices int, firstSeq uint64) []*telemetry.EnrichedRecord {
	base := time.Date(2025, 3, 14, 7, 30, 0, 0, time.UTC)
	recs := make([]*telemetry.EnrichedRecord, 0, n)
	for i := range n {
		dev := i % devices
		k := uint64(i / devices)
		r := &telemetry.Reading{Seq: firstSeq + k, TimeMs: base.Add(time.Duration(k) * time.Second).UnixMilli()}
		r.SetPosition(45.1+float64(dev)*0.01, -73.7+float64(k)*1e-5)
		speed := float32(i % 120)
		r.SpeedKmh = &speed
		recs = append(recs, &telemetry.EnrichedRecord{
			Record:     &telemetry.Record{DeviceId: fmt.Sprintf("dev-%04d", dev), ReceivedMs: time.Now().UnixMilli(), Reading: r},
			Enrichment: &telemetry.Enrichment{Fleet: fmt.Sprintf("fleet-%d", dev%3), Region: "eu-west"},
		})
	}
	return recs
}

// entriesOf packs recs into PublishBatch entries of per records each.
func entriesOf(t testing.TB, router string, recs []*telemetry.EnrichedRecord, per int) [][]byte {
	t.Helper()
	var out [][]byte
	for i := 0; i < len(recs); i += per {
		pb := &telemetry.PublishBatch{Router: router, Seq: uint64(len(out) + 1), Records: recs[i:min(i+per, len(recs))]}
		b, err := proto.Marshal(pb)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// readLake returns every row of the local lake in dir.
func readLake(t testing.TB, dir string) []lake.Row {
	t.Helper()
	var rows []lake.Row
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && p != dir && (strings.HasPrefix(e.Name(), "_") || strings.HasPrefix(e.Name(), ".")) {
			return filepath.SkipDir
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".parquet") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		pf, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		rd := parquet.NewGenericReader[lake.Row](pf)
		defer rd.Close()
		buf := make([]lake.Row, pf.NumRows())
		n := 0
		for n < len(buf) {
			k, err := rd.Read(buf[n:])
			n += k
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		rows = append(rows, buf[:n]...)
		return nil
	})
	if err != nil {
		t.Fatalf("read lake: %v", err)
	}
	return rows
}

// rowKeys returns the (device, seq) keys of rows, with their counts.
func rowKeys(rows []lake.Row) map[string]int {
	keys := make(map[string]int, len(rows))
	for _, r := range rows {
		keys[fmt.Sprintf("%s/%d", r.DeviceID, r.Seq)]++
	}
	return keys
}

func recKey(r *telemetry.EnrichedRecord) string {
	return fmt.Sprintf("%s/%d", r.GetRecord().GetDeviceId(), r.GetRecord().GetReading().GetSeq())
}

// testWriterConfig returns a lake writer's config for the routers, with
// everything under dir.
func testWriterConfig(dir string, routers ...string) Config {
	cfg := DefaultConfig()
	cfg.Routers = routers
	cfg.Links = testLinks
	cfg.QueueDir = filepath.Join(dir, "queue")
	cfg.Lake.Dir = filepath.Join(dir, "lake")
	cfg.Lake.CompactInterval = 0
	cfg.BatchInterval = 50 * time.Millisecond
	return cfg
}

// running is a writer started in the background.
type running struct {
	w      *Writer
	reg    *prometheus.Registry
	stop   context.CancelFunc
	errc   chan error
	stopFn func()
}

// startWriter starts a writer; prepare may change it before Run.
func startWriter(t testing.TB, cfg Config, prepare func(*Writer)) *running {
	t.Helper()
	return startWriterLogged(t, cfg, prepare, testLogWriter{t})
}

// startWriterLogged is startWriter with the log (info and up) written to
// logs.
func startWriterLogged(t testing.TB, cfg Config, prepare func(*Writer), logs io.Writer) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	w, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})), reg)
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{w: w, reg: reg, stop: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- w.Run(ctx) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			r.shutdown(t)
		}
	})
	r.stopFn = func() { stopped = true }
	return r
}

// shutdown stops the writer and checks that Run returned nil in time.
func (r *running) shutdown(t testing.TB) {
	t.Helper()
	if r.stopFn != nil {
		r.stopFn()
	}
	r.stop()
	select {
	case err := <-r.errc:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// counter returns the value of a writer metric.
func (r *running) metric(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// testLogWriter sends logs to t.Log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
