package storagewriter

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// fakeSink fails its first failFor writes transiently, refuses for good
// any batch holding a record whose key is in refuse, and keeps the rest.
type fakeSink struct {
	mu      sync.Mutex
	failFor int
	refuse  map[string]bool
	tries   int
	recs    []*telemetry.EnrichedRecord
	closed  bool
}

func (f *fakeSink) open() (sink.Sink, error) { return f, nil }

func (f *fakeSink) Name() string { return "fake" }

func (f *fakeSink) Write(ctx context.Context, recs []*telemetry.EnrichedRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.tries <= f.failFor {
		return errors.New("fake: store unavailable")
	}
	for _, r := range recs {
		if f.refuse[recKey(r)] {
			return sink.Permanent(errors.New("fake: field type conflict"))
		}
	}
	f.recs = append(f.recs, recs...)
	return nil
}

func (f *fakeSink) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeSink) attempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries
}

func (f *fakeSink) written() []*telemetry.EnrichedRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*telemetry.EnrichedRecord(nil), f.recs...)
}

// TestSinkOutage: a sink that fails transiently holds the records in the
// queue, retries (metrics say so), then writes them all.
func TestSinkOutage(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-c")
	cfg := testWriterConfig(dir, rt.addr)
	fs := &fakeSink{failFor: 4}
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })

	recs := makeRecords(200, 4, 1)
	rt.deliver(1, entriesOf(t, "router-c", recs, 25))
	// Acked to the router while the sink is down: the queue holds them.
	waitFor(t, 10*time.Second, "the sink down", func() bool { return r.metric(r.w.m.sinkDown) == 1 })
	if n, _ := r.w.q.Load().Depth(); n == 0 {
		t.Error("queue empty while the sink is down")
	}
	waitFor(t, 20*time.Second, "every record written", func() bool {
		return r.metric(r.w.m.recordsWritten) == float64(len(recs))
	})
	if got := r.metric(r.w.m.sinkErrors.WithLabelValues("transient")); got != 4 {
		t.Errorf("transient sink errors = %v, want 4", got)
	}
	if got := r.metric(r.w.m.sinkDown); got != 0 {
		t.Errorf("sink_down = %v after recovery", got)
	}
	if got := len(fs.written()); got != len(recs) {
		t.Errorf("sink holds %d records, want %d", got, len(recs))
	}
	seen := map[string]bool{}
	for _, rec := range fs.written() {
		seen[recKey(rec)] = true
	}
	for _, rec := range recs {
		if !seen[recKey(rec)] {
			t.Fatalf("record %s not written", recKey(rec))
		}
	}
	waitFor(t, 10*time.Second, "queue emptied", func() bool {
		n, _ := r.w.q.Load().Depth()
		return n == 0
	})
}

// TestDeadLetter: records the sink refuses for good are isolated and
// dead-lettered; the rest are stored.
func TestDeadLetter(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-d")
	cfg := testWriterConfig(dir, rt.addr)
	cfg.DeadLetterDir = dir + "/dl"
	recs := makeRecords(300, 5, 1)
	bad := map[string]bool{recKey(recs[7]): true, recKey(recs[150]): true, recKey(recs[151]): true}
	fs := &fakeSink{refuse: bad}
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	rt.deliver(1, entriesOf(t, "router-d", recs, 50))

	waitFor(t, 20*time.Second, "the good records written", func() bool { return len(fs.written()) == len(recs)-len(bad) })
	waitFor(t, 10*time.Second, "dead letters counted", func() bool { return r.metric(r.w.m.deadLettered) == float64(len(bad)) })
	if got := r.metric(r.w.m.sinkErrors.WithLabelValues("permanent")); got == 0 {
		t.Error("permanent sink errors not counted")
	}
	for _, rec := range fs.written() {
		if bad[recKey(rec)] {
			t.Errorf("refused record %s stored", recKey(rec))
		}
	}
	r.shutdown(t)

	files, err := filepath.Glob(cfg.DeadLetterDir + "/lake-dead-letter-*.jsonl")
	if err != nil || len(files) != 1 {
		t.Fatalf("dead-letter files %v (%v), want one", files, err)
	}
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var dl DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &dl); err != nil {
			t.Fatalf("dead-letter line %q: %v", sc.Text(), err)
		}
		if dl.Router != "router-d" || dl.Writer != "lake" || dl.Reason == "" || time.Since(dl.Time) > time.Minute {
			t.Errorf("dead-letter line %+v", dl)
		}
		var rec telemetry.EnrichedRecord
		if err := protojson.Unmarshal(dl.Record, &rec); err != nil {
			t.Fatalf("dead-letter record %s: %v", dl.Record, err)
		}
		got[recKey(&rec)] = true
	}
	if len(got) != len(bad) {
		t.Errorf("dead-lettered %v, want %v", got, bad)
	}
	for k := range bad {
		if !got[k] {
			t.Errorf("record %s not in the dead-letter file", k)
		}
	}
	st, _ := f.Stat()
	if n := r.metric(r.w.m.deadLetteredBytes); n != float64(st.Size()) {
		t.Errorf("dead_lettered_bytes_total = %v, the file holds %d", n, st.Size())
	}
	if n := r.metric(r.w.m.dlFiles); n != 1 {
		t.Errorf("dead_letter_files = %v, want 1", n)
	}
}

// gateSink holds every write until want writes are in flight at once (or
// its release channel is closed), and records the most it saw.
type gateSink struct {
	fakeSink
	want    int
	mu      sync.Mutex
	now     int
	most    int
	release chan struct{}
}

func (g *gateSink) open() (sink.Sink, error) { return g, nil }

func (g *gateSink) Write(ctx context.Context, recs []*telemetry.EnrichedRecord) error {
	g.mu.Lock()
	g.now++
	g.most = max(g.most, g.now)
	if g.now >= g.want {
		select {
		case <-g.release:
		default:
			close(g.release)
		}
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.now--
		g.mu.Unlock()
	}()
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.fakeSink.Write(ctx, recs)
}

func (g *gateSink) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.now
}

func (g *gateSink) maxInFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.most
}

// TestSinkWritesConcurrent: the writer keeps SinkWriters writes in flight
// at once (the store works on one while the next is on its way), and
// every record still lands once the writes finish, in whatever order.
func TestSinkWritesConcurrent(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-w")
	cfg := testWriterConfig(dir, rt.addr)
	cfg.SinkWriters = 3
	cfg.BatchRecords = 20
	gs := &gateSink{want: cfg.SinkWriters, release: make(chan struct{})}
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = gs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })

	recs := makeRecords(400, 8, 1)
	ents := entriesOf(t, "router-w", recs, 20)
	// One entry at a time until the gate is full: a queue read takes all
	// there is, so entries sent together would make one write.
	for i := range cfg.SinkWriters - 1 {
		rt.deliver(uint64(i+1), ents[i:i+1])
		waitFor(t, 10*time.Second, "a write in flight", func() bool { return gs.inFlight() == i+1 })
	}
	rt.deliver(uint64(cfg.SinkWriters), ents[cfg.SinkWriters-1:])
	waitFor(t, 20*time.Second, "every record written", func() bool {
		return r.metric(r.w.m.recordsWritten) == float64(len(recs))
	})
	if got := gs.maxInFlight(); got != cfg.SinkWriters {
		t.Errorf("at most %d sink writes in flight at once, want %d", got, cfg.SinkWriters)
	}
	seen := map[string]int{}
	for _, rec := range gs.written() {
		seen[recKey(rec)]++
	}
	for _, rec := range recs {
		if seen[recKey(rec)] != 1 {
			t.Fatalf("record %s written %d times, want 1", recKey(rec), seen[recKey(rec)])
		}
	}
	waitFor(t, 10*time.Second, "queue emptied", func() bool {
		n, _ := r.w.q.Load().Depth()
		return n == 0
	})
}
