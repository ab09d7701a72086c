package storagewriter

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// teeLog shows the log in the test's output and keeps it for counting.
type teeLog struct {
	t   testing.TB
	buf syncBuf
}

func (l *teeLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return l.buf.Write(p)
}

func (l *teeLog) count(substr string) int { return l.buf.count(substr) }

// gauge returns the value of the gauge name in reg (any labels), -1 if
// absent.
func gauge(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				return metricValue(m)
			}
		}
	}
	return -1
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return -1
}

// TestOutageLogOncePerOutage: with the real InfluxDB missing the writer's
// database, the writer holds the records, is not ready and says why, and
// logs the outage once, a summary per interval (1 s here, 5 min by
// default) and once when it ends — not a line per retry. Once the database
// exists, every record lands.
func TestOutageLogOncePerOutage(t *testing.T) {
	inf := testenv.InfluxD(t)
	const db = "created_later"
	rt := startFakeRouter(t, "router-o")
	cfg := testWriterConfig(t.TempDir(), rt.addr)
	cfg.Sink = SinkInflux
	cfg.Influx.URL, cfg.Influx.Database = inf.URL, db
	logs := &teeLog{t: t}
	start := time.Now()
	r := startWriterLogged(t, cfg, func(w *Writer) { w.out.every = time.Second }, logs)
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() == "influx" })
	waitFor(t, 10*time.Second, "not ready, naming the database", func() bool {
		err := r.w.Ready()
		return err != nil && strings.Contains(err.Error(), `database "created_later" does not exist`)
	})
	if got := gauge(t, r.reg, "drover_influx_database_missing"); got != 1 {
		t.Errorf("drover_influx_database_missing = %v, want 1", got)
	}

	// Acked while the database is missing: the queue holds them. One entry
	// at a time, so that several sink writers retry at once.
	recs := recentRecords(120, 6, 1)
	for i, e := range entriesOf(t, "router-o", recs, 20) {
		rt.deliver(uint64(i+1), [][]byte{e})
	}
	waitFor(t, 30*time.Second, "retries and two summaries", func() bool {
		return r.metric(r.w.m.sinkErrors.WithLabelValues("transient")) >= 10 && logs.count("sink still down") >= 2
	})
	if err := r.w.Ready(); err == nil {
		t.Error("ready while the database is missing")
	}

	inf.CreateDatabase(t, db)
	waitFor(t, 30*time.Second, "every record written", func() bool { return r.metric(r.w.m.recordsWritten) == float64(len(recs)) })
	outageFor := time.Since(start)
	waitFor(t, 10*time.Second, "ready", func() bool { return r.w.Ready() == nil })
	if got := gauge(t, r.reg, "drover_influx_database_missing"); got != 0 {
		t.Errorf("drover_influx_database_missing = %v once the database exists, want 0", got)
	}
	r.shutdown(t)

	attempts := int(r.metric(r.w.m.sinkErrors.WithLabelValues("transient")))
	starts, summaries, ends := logs.count("sink outage:"), logs.count("sink still down"), logs.count("sink is back")
	t.Logf("outage of %v: %d failed writes, %d log lines (%d start, %d summaries, %d end)",
		outageFor.Round(time.Millisecond), attempts, starts+summaries+ends, starts, summaries, ends)
	if starts != 1 || ends != 1 {
		t.Errorf("%d outage-start and %d outage-end lines, want 1 each", starts, ends)
	}
	if limit := int(outageFor/time.Second) + 1; summaries > limit {
		t.Errorf("%d summaries over %v, want at most one a second (%d)", summaries, outageFor, limit)
	}
	if errs := logs.count("level=ERROR"); errs != starts+summaries {
		t.Errorf("%d ERROR lines, want only the outage's own %d (none per retry)", errs, starts+summaries)
	}
	if attempts <= starts+summaries+ends {
		t.Errorf("%d failed writes for %d lines: the test did not retry more often than it logged", attempts, starts+summaries+ends)
	}
	rows := inf.WithDatabase(t, db).Query(t, `SELECT count(seq) FROM telemetry`)
	if n, _ := testenv.Float(rows[0][1]); n != float64(len(recs)) {
		t.Errorf("InfluxDB holds %v points, want %d", rows[0][1], len(recs))
	}
}

// TestCreateDatabase: with -influx-create-database the writer creates the
// missing database at start, says so once, and is ready without an outage.
func TestCreateDatabase(t *testing.T) {
	inf := testenv.InfluxD(t)
	rt := startFakeRouter(t, "router-n")
	cfg := testWriterConfig(t.TempDir(), rt.addr)
	cfg.Sink = SinkInflux
	cfg.Influx.URL, cfg.Influx.Database, cfg.Influx.CreateDatabase = inf.URL, "made_by_writer", true
	logs := &teeLog{t: t}
	r := startWriterLogged(t, cfg, nil, logs)
	waitFor(t, 15*time.Second, "ready", func() bool { return r.w.Ready() == nil })
	recs := recentRecords(50, 5, 1)
	rt.deliver(1, entriesOf(t, "router-n", recs, 25))
	waitFor(t, 20*time.Second, "every record written", func() bool { return r.metric(r.w.m.recordsWritten) == float64(len(recs)) })
	if n := logs.count("InfluxDB database created"); n != 1 {
		t.Errorf("%d lines saying the database was created, want 1", n)
	}
	if n := logs.count("sink outage"); n != 0 {
		t.Errorf("%d outage lines, want none: the database was created before any write", n)
	}
	if got := gauge(t, r.reg, "drover_influx_databases_created_total"); got != 1 {
		t.Errorf("drover_influx_databases_created_total = %v, want 1", got)
	}
	rows := inf.WithDatabase(t, "made_by_writer").Query(t, `SELECT count(seq) FROM telemetry`)
	if n, _ := testenv.Float(rows[0][1]); n != float64(len(recs)) {
		t.Errorf("InfluxDB holds %v points, want %d", rows[0][1], len(recs))
	}
}
