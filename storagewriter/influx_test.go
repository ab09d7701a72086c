package storagewriter

import (
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestInfluxEndToEnd: records sent by a router reach a real InfluxDB
// through the writer and are queryable; a resent batch leaves one point per
// reading.
func TestInfluxEndToEnd(t *testing.T) {
	inf := testenv.InfluxD(t)
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-i")
	cfg := testWriterConfig(dir, rt.addr)
	cfg.Sink = SinkInflux
	cfg.Influx.URL = inf.URL
	cfg.Influx.Database = inf.Database
	r := startWriter(t, cfg, nil)
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() == "influx" })
	waitFor(t, 15*time.Second, "ready (InfluxDB pinged)", func() bool { return r.w.Ready() == nil })

	recs := makeRecords(500, 5, 1)
	entries := entriesOf(t, "router-i", recs, 50)
	rt.deliver(1, entries[:5])
	rt.deliver(6, entries[5:])
	rt.deliver(6, entries[5:]) // a resend
	waitFor(t, 20*time.Second, "every record written", func() bool { return r.metric(r.w.m.recordsWritten) >= float64(len(recs)) })

	rows := inf.Query(t, `SELECT count(seq) FROM telemetry`)
	if len(rows) != 1 || len(rows[0]) < 2 {
		t.Fatalf("count query returned %v", rows)
	}
	if n, _ := testenv.Float(rows[0][1]); n != float64(len(recs)) {
		t.Errorf("InfluxDB holds %v points, want %d", rows[0][1], len(recs))
	}
	rows = inf.Query(t, `SELECT seq, speed_kmh FROM telemetry WHERE device = 'dev-0003' ORDER BY time DESC LIMIT 1`)
	if len(rows) != 1 {
		t.Fatalf("device query returned %v", rows)
	}
	if seq, _ := testenv.Float(rows[0][1]); seq != 100 {
		t.Errorf("last seq of dev-0003 = %v, want 100", rows[0][1])
	}
}
