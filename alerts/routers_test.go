package alerts

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestEngineFollowsDNS: with -routers dns+tcp://name:port the engine
// subscribes to the routers the name resolves to (as on Kubernetes, where
// routers come and go behind a headless Service), evaluates what they
// deliver, and lets go of a router the name no longer lists.
func TestEngineFollowsDNS(t *testing.T) {
	dns := testenv.DNS(t)
	p := startPipeline(t, tripDevices(1))
	_, port, err := net.SplitHostPort(p.router.StoreAddr()[len("tcp://"):])
	if err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	writeRules(t, rulesPath, tripRules("http://127.0.0.1:1/", "a-secret-nobody-uses"))
	cfg := testEngineConfig(t, t.TempDir(), []string{"dns+tcp://routers.test:" + port}, rulesPath)
	cfg.Resolve = endpoints.Config{Interval: 100 * time.Millisecond, Server: dns.Addr}
	// Not listed yet: the engine starts with no router.
	en := startEngine(t, cfg)
	if got := counter(t, en.reg, "drover_alerts_routers_up"); got != 0 {
		t.Fatalf("routers up before DNS lists one: %v", got)
	}

	dns.Set("routers.test", "127.0.0.1")
	waitFor(t, 10*time.Second, "the router up", func() bool { return counter(t, en.reg, "drover_alerts_routers_up") == 1 })
	recs := trips(1, 30, time.Now().Add(-time.Minute))[0]
	p.send(recs)
	waitFor(t, 20*time.Second, "the readings evaluated", func() bool {
		return counter(t, en.reg, "drover_alerts_readings_total") == float64(len(recs))
	})

	// A name that resolves to nothing keeps the last answer (a DNS
	// failure is not a scale-in), so the router goes away by moving.
	dns.Set("routers.test", "127.0.0.2")
	waitFor(t, 10*time.Second, "the router let go of", func() bool { return counter(t, en.reg, "drover_alerts_routers_up") == 0 })
}
