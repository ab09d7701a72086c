package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/lake"
)

// lakeTestEvents returns n events of distinct alerts, a minute apart from
// start, so that they fall in more than one hour.
func lakeTestEvents(start time.Time, from, n int) []eval.Event {
	evs := make([]eval.Event, n)
	for i := range evs {
		at := start.Add(time.Duration(from+i) * time.Minute).UnixMilli()
		dev := fmt.Sprintf("truck-%04d", from+i)
		evs[i] = eval.Event{Kind: eval.EventRaised, AtMs: at, DetectedMs: at + 500, Alert: eval.Alert{
			ID: eval.AlertID(eval.TypeOverspeed, "", dev, at), Type: eval.TypeOverspeed, Rule: "speed", Device: dev,
			Fleet: "acme", Severity: eval.Major, State: eval.StateActive, StartMs: at, RaisedMs: at,
			Value: 97, Peak: 97, Threshold: 80, Unit: "km/h", FirstSeq: 1, LastSeq: 9}}
	}
	return evs
}

// lakeTestEngine is an engine with only what an output needs: its outbox
// in dir and the lake's store settings.
func lakeTestEngine(t *testing.T, dir string, lc lake.Config) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Lake, cfg.LakeFlush = lc, 20*time.Millisecond
	logger := testLogger("lake")
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{cfg: cfg, logger: logger, m: m, now: time.Now}
	if e.out, err = openOutbox(filepath.Join(dir, "outbox"), 0, logger); err != nil {
		t.Fatal(err)
	}
	return e
}

// runLake runs the engine's lake output until the returned stop is called
// or the output's goroutine ends (a simulated crash).
func runLake(t *testing.T, e *Engine) (stop func(), done chan struct{}) {
	t.Helper()
	o, err := e.lakeOutput()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		defer close(done)
		e.runOutput(ctx, o)
	}()
	return func() { cancel(); <-done; _ = e.out.close() }, done
}

// The lake's alerts table in Azure Blob Storage (a real Azurite), through
// the lake's store: files under the table's folder in the lake's partition
// layout and naming, readable by DuckDB with the documented query, and
// every event exactly once although the engine died after writing a batch
// and before saving its cursor (the batch is then delivered again, under
// the same names, and nothing new is written).
func TestLakeOnAzureExactlyOnceAcrossACrash(t *testing.T) {
	az := testenv.Azurite(t)
	node, module := testenv.DuckDBNode(t)
	lc := lake.Config{Name: lakeWriter, Dir: filepath.Join(t.TempDir(), "scratch"),
		AzureURL: az.ContainerURL + "/alerts", AzureConnectionString: az.ConnectionString}
	dir := t.TempDir()
	start := time.Date(2026, 3, 14, 7, 40, 0, 0, time.UTC)

	// The first engine writes a batch, then dies before saving its cursor.
	e := lakeTestEngine(t, dir, lc)
	var crashed atomic.Bool
	e.hook = func(point string) {
		if point == "delivered-lake" && crashed.CompareAndSwap(false, true) {
			runtime.Goexit() // the output's goroutine ends here: no cursor saved
		}
	}
	if _, err := e.out.cursor("lake", true); err != nil { // from the first record on
		t.Fatal(err)
	}
	first := lakeTestEvents(start, 0, 30) // 07:40 to 08:09: two hours
	if err := e.out.append(1, first[:20]); err != nil {
		t.Fatal(err)
	}
	if err := e.out.append(2, first[20:]); err != nil {
		t.Fatal(err)
	}
	stop, done := runLake(t, e)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the lake output did not deliver")
	}
	stop()
	store, err := lake.OpenStore(lake.Config{Name: "reader", Dir: t.TempDir(), AzureURL: lc.AzureURL,
		AzureConnectionString: az.ConnectionString})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	names, err := store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 {
		t.Fatalf("after the first delivery: %d files %v, want 2 (one per hour)", len(names), names)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "outbox", "cursors", "lake")); strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("the lake's cursor is %q after the crash, want 0 (the test crashes before it is saved)", b)
	}

	// Meanwhile the outbox grows; the second engine delivers the batch the
	// first one planned again, then the rest.
	second := lakeTestEvents(start, 30, 10)
	e = lakeTestEngine(t, dir, lc)
	if err := e.out.append(3, second); err != nil {
		t.Fatal(err)
	}
	stop, _ = runLake(t, e)
	waitFor(t, 20*time.Second, "the lake's cursor at the last record", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "outbox", "cursors", "lake"))
		return strings.TrimSpace(string(b)) == "3"
	})
	stop()
	if n := testutil.ToFloat64(e.m.lakeFiles.WithLabelValues("existed")); n != 2 {
		t.Errorf("files found already written on the delivery after the crash: %v, want 2", n)
	}

	// What is in Azure: the lake's layout and names, each event once.
	names, err = store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	nameRE := regexp.MustCompile(`^date=2026-03-14/hour=0[78]/alerts-\d{19}-\d{6}\.parquet$`)
	local := t.TempDir()
	seen := map[string]int{}
	for _, name := range names {
		if !nameRE.MatchString(name) {
			t.Errorf("file %q: not date=.../hour=.../alerts-<nanos>-<n>.parquet", name)
		}
		b, err := store.ReadFile(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := parquet.Read[LakeRow](bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, r := range rows {
			seen[r.EventID]++
			if want := lake.PartitionDir(time.UnixMilli(r.AtMs)); !strings.HasPrefix(name, want) {
				t.Errorf("%s holds an event of %s", name, want)
			}
		}
		p := filepath.Join(local, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, ev := range slices.Concat(first, second) {
		if n := seen[ev.ID()]; n != 1 {
			t.Errorf("event %s: %d times in the table, want 1", ev.ID(), n)
		}
	}
	if len(seen) != len(first)+len(second) {
		t.Errorf("%d distinct events in the table, want %d", len(seen), len(first)+len(second))
	}

	// DuckDB reads the files as the documented query does.
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out := testenv.RunDuckDB(t, qctx, node, module, filepath.Join("testdata", "duckdb_alerts.cjs"), local)
	var got struct {
		Total, Distinct int
		Partitions      []string
		Types           map[string]string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("duckdb output %q: %v", out, err)
	}
	t.Logf("duckdb: %s", out)
	if n := len(first) + len(second); got.Total != n || got.Distinct != n {
		t.Errorf("DuckDB: %d rows, %d distinct events; want %d and %d", got.Total, got.Distinct, n, n)
	}
	if want := []string{"2026-03-14/07", "2026-03-14/08"}; !slices.Equal(got.Partitions, want) {
		t.Errorf("DuckDB partitions %v, want %v", got.Partitions, want)
	}
	for col, want := range map[string]string{"event_id": "VARCHAR", "at": "TIMESTAMP WITH TIME ZONE", "device_id": "VARCHAR",
		"late": "BOOLEAN", "peak": "DOUBLE", "end_ms": "BIGINT"} {
		if got.Types[col] != want {
			t.Errorf("column %s: DuckDB type %q, want %q", col, got.Types[col], want)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(lc.Dir, "_tmp", lakeWriter)); len(left) != 0 {
		t.Errorf("scratch folder holds %d files", len(left))
	}
}
