package alerts

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/telemetry"
)

// BenchmarkWebhookDelay measures reading → webhook delivered: from the
// time a reading reaches the frontend (its received time, which the
// event carries as detected_ms) to the time a webhook receiver has the
// event, through a real router, the engine's queue, evaluation, outbox
// and signed webhook delivery. The load is benchReadingsPerSec readings a
// second from benchDevices vehicles (one a second each), of which a
// thirtieth brake hard each second (about 330 harsh braking events a
// second). b.N is the number of seconds of load; the first 5 s are
// warm-up, not measured. Goal (issue 18): p99 ≤ 1 s at 10,000 readings/s.
// Everything runs in this process, on the same cores (router, frontend
// drainer, engine, receiver, load): docs/performance.md, "Alerts".
//
//	go test -run='^$' -bench=BenchmarkWebhookDelay -benchtime=60x ./alerts/
func BenchmarkWebhookDelay(b *testing.B) {
	const (
		benchDevices        = 10_000
		benchReadingsPerSec = 10_000
		warmup              = 5
	)
	var devs []registry.Device
	for d := range benchDevices {
		devs = append(devs, registry.Device{ID: fmt.Sprintf("truck-%05d", d), TokenSHA256: "ab", Fleet: "acme", Class: "truck"})
	}
	for i := range devs {
		devs[i].TokenSHA256 = fmt.Sprintf("%064x", i)
	}

	var (
		mu     sync.Mutex
		delays []time.Duration
		from   int64 // received times before this are warm-up
		events int
	)
	const secret = "bench-webhook-secret"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now().UnixMilli()
		body, _ := io.ReadAll(r.Body)
		var p WebhookPayload
		if err := json.Unmarshal(body, &p); err != nil || Sign(secret, r.Header.Get(HeaderTimestamp), body) != r.Header.Get(HeaderSignature) {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range p.Events {
			events++
			if ev.DetectedMs >= from && from > 0 {
				delays = append(delays, time.Duration(now-ev.DetectedMs)*time.Millisecond)
			}
		}
	}))
	defer srv.Close()

	p := startPipeline(b, devs)
	rulesPath := filepath.Join(b.TempDir(), "rules.json")
	f := false
	writeRules(b, rulesPath, &eval.RuleSet{
		Rules:    []eval.Rule{{ID: "no-silence", Kind: eval.KindSilence, Enabled: &f}},
		Webhooks: []eval.Webhook{{ID: "ops", URL: srv.URL, Secret: secret}},
	})
	cfg := testEngineConfig(b, b.TempDir(), []string{p.router.StoreAddr()}, rulesPath)
	cfg.SnapshotInterval, cfg.TickInterval = 5*time.Second, time.Second
	startEngine(b, cfg)

	b.ResetTimer()
	seconds := b.N + warmup
	start := time.Now().Truncate(time.Second).Add(time.Second)
	seq := make([]uint64, benchDevices)
	for s := range seconds {
		if s == warmup {
			mu.Lock()
			from = time.Now().UnixMilli()
			mu.Unlock()
		}
		// One reading per vehicle, spread over the second in 20 slices.
		for slice := range 20 {
			at := start.Add(time.Duration(s)*time.Second + time.Duration(slice)*50*time.Millisecond)
			time.Sleep(time.Until(at))
			now := time.Now().UnixMilli()
			var recs []*telemetry.Record
			for d := slice * benchDevices / 20; d < (slice+1)*benchDevices/20; d++ {
				seq[d]++
				kmh := float32(60)
				if (s+d)%30 == 0 {
					kmh = 20 // 40 km/h lost in a second: 11 m/s², harsh braking
				}
				rd := &telemetry.Reading{Seq: seq[d], TimeMs: now - 100, SpeedKmh: &kmh}
				rd.SetPosition(-26+float64(d)*1e-4, 28+float64(s)*1e-4)
				recs = append(recs, &telemetry.Record{DeviceId: devs[d].ID, ReceivedMs: now, Reading: rd})
			}
			p.send(recs)
		}
	}
	// The last events: give them up to 10 s.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := events
		mu.Unlock()
		time.Sleep(time.Second)
		mu.Lock()
		same := n == events
		mu.Unlock()
		if same {
			break
		}
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(delays) == 0 {
		b.Fatalf("no webhook event measured (%d received)", events)
	}
	slices.Sort(delays)
	q := func(f float64) float64 { return float64(delays[int(f*float64(len(delays)-1))].Milliseconds()) }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(delays[len(delays)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(len(delays))/float64(b.N), "events/s")
	b.ReportMetric(0, "ns/op")
}
