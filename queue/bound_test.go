package queue

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// autoPeers returns how many auto-bounded queues this process has open on
// the volume of q, q included.
func autoPeers(q *Queue) int {
	volumes.Lock()
	defer volumes.Unlock()
	return len(volumes.m[q.dev])
}

// near reports whether got is within 2% of want: the volume's free space
// moves while the test runs (other tests write to the same disk).
func near(got, want int64) bool {
	return math.Abs(float64(got-want)) <= 0.02*float64(want)
}

// TestAutoBound: a queue opened without a bound gets a share of its
// volume's free space, split with the other auto-bounded queues of the
// process on the same volume (each one that joins shrinks the others' bound;
// one that closes gives its share back); an explicit bound and "unbounded"
// are kept as given; the bound, the fill ratio and the volume's free bytes
// are metrics.
func TestAutoBound(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	q1, err := Open(filepath.Join(dir, "a"), Options{Name: "a"}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer q1.Close()
	n := int64(autoPeers(q1))
	free, _, err := statVolume(dir)
	if err != nil {
		t.Fatal(err)
	}
	held := int64(0)
	volumes.Lock()
	for o := range volumes.m[q1.dev] {
		held += o.diskBytes()
	}
	volumes.Unlock()
	want := max(MinAutoBytes, int64(DefaultDiskShare*float64(free+held))/n)
	b1 := q1.MaxBytes()
	if !near(b1, want) {
		t.Fatalf("auto bound %d with %d auto queue(s) on the volume: want about %d = 0.8 × (free %d + held %d) / %d", b1, n, want, free, held, n)
	}
	if g := testutil.ToFloat64(q1.m.maxBytes); g != float64(b1) {
		t.Errorf("drover_queue_max_bytes = %v, want %d", g, b1)
	}
	if g := testutil.ToFloat64(q1.m.volumeFree); !near(int64(g), free) {
		t.Errorf("drover_queue_volume_free_bytes = %v, want about %d", g, free)
	}
	if _, size, _ := statVolume(dir); testutil.ToFloat64(q1.m.volumeSize) != float64(size) {
		t.Errorf("drover_queue_volume_size_bytes = %v, want %d", testutil.ToFloat64(q1.m.volumeSize), size)
	}

	// A second queue on the volume: both get (n+1)-ths.
	q2, err := Open(filepath.Join(dir, "b"), Options{Name: "b"}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	b1split, b2 := q1.MaxBytes(), q2.MaxBytes()
	if !near(b2, b1split) || !near(b1split*(n+1), b1*n) {
		t.Fatalf("with a second queue: bounds %d and %d, want both about %d × %d / %d", b1split, b2, b1, n, n+1)
	}
	q2.Close()
	if b := q1.MaxBytes(); !near(b, b1) {
		t.Fatalf("after the second queue closed: bound %d, want its share back: about %d", b, b1)
	}

	// An explicit bound takes no part in the split; unbounded says -1.
	q3, err := Open(filepath.Join(dir, "c"), Options{Name: "c", MaxBytes: 1000}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer q3.Close()
	q4, err := Open(filepath.Join(dir, "d"), Options{Name: "d", MaxBytes: -1}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer q4.Close()
	if q3.MaxBytes() != 1000 || q4.MaxBytes() != -1 || !near(q1.MaxBytes(), b1) {
		t.Fatalf("bounds %d, %d (want 1000, -1), auto %d (want about %d)", q3.MaxBytes(), q4.MaxBytes(), q1.MaxBytes(), b1)
	}
	if g := testutil.ToFloat64(q4.m.maxBytes); g != -1 {
		t.Errorf("unbounded: drover_queue_max_bytes = %v, want -1", g)
	}
	ctx := context.Background()
	if _, err := q3.Append(ctx, make([]byte, 248)); err != nil { // 250 framed bytes
		t.Fatal(err)
	}
	if g := testutil.ToFloat64(q3.m.fillRatio); g != 0.25 {
		t.Errorf("drover_queue_fill_ratio = %v after 250 of 1000 bytes, want 0.25", g)
	}
	if _, err := q3.Append(ctx, make([]byte, 800)); !errors.Is(err, ErrFull) {
		t.Fatalf("append past the bound: %v, want ErrFull", err)
	}

	// The floor: a tiny share still gives a working queue.
	q5, err := Open(filepath.Join(dir, "e"), Options{Name: "e", DiskShare: 1e-12}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer q5.Close()
	if b := q5.MaxBytes(); b != MinAutoBytes {
		t.Fatalf("auto bound with a tiny share: %d, want the floor %d", b, MinAutoBytes)
	}
	if _, err := Open(filepath.Join(dir, "f"), Options{DiskShare: 1.5}, nil, nil); err == nil {
		t.Fatal("a disk share of 1.5 was accepted")
	}
}

// boundLog captures the "bound set from the volume" log lines.
type boundLog struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (b *boundLog) Enabled(context.Context, slog.Level) bool { return true }
func (b *boundLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.HasPrefix(r.Message, "queue: bound set from the volume") {
		return nil
	}
	m := map[string]any{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	b.mu.Lock()
	b.lines = append(b.lines, m)
	b.mu.Unlock()
	return nil
}
func (b *boundLog) WithAttrs([]slog.Attr) slog.Handler { return b }
func (b *boundLog) WithGroup(string) slog.Handler      { return b }

// TestAutoBoundCountsWhatIsHeld: a queue reopened while it holds data (a
// restart during an outage) counts its own files as room, so its bound
// does not shrink by what it holds: bound = 0.8 × (free + held) / n
// exactly, with held at least what it holds.
func TestAutoBoundCountsWhatIsHeld(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := openT(t, dir, Options{})
	big := make([]byte, 400<<10)
	for range 40 { // 15.6 MiB
		if _, err := q.Append(ctx, big); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	lg := &boundLog{}
	q, err := Open(dir, Options{}, slog.New(lg), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	own := q.diskBytes()
	if own < 15<<20 {
		t.Fatalf("queue files hold %d bytes, want at least 15 MiB", own)
	}
	if len(lg.lines) != 1 {
		t.Fatalf("%d bound log lines, want 1", len(lg.lines))
	}
	l := lg.lines[0]
	free, held, bound := l["free_bytes"].(int64), l["held_bytes"].(int64), l["bound_bytes"].(int64)
	n := int64(strings.Count(l["queues"].(string), ",") + 1)
	if held < own {
		t.Fatalf("held %d: want at least the reopened queue's own %d bytes", held, own)
	}
	if want := max(MinAutoBytes, int64(DefaultDiskShare*float64(free+held))/n); bound != want || q.MaxBytes() != want {
		t.Fatalf("bound %d (logged %d), want %d = 0.8 × (free %d + held %d) / %d", q.MaxBytes(), bound, want, free, held, n)
	}
}
