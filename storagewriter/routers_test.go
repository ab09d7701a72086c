package storagewriter

import (
	"net"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestWriterFollowsDNS: with -routers dns+tcp://name:port a writer
// subscribes to every router the name resolves to, to a router that
// appears while it runs (scale-out: its data reaches the sink without a
// restart), and stops subscribing to one that disappears.
func TestWriterFollowsDNS(t *testing.T) {
	dns := testenv.DNS(t)
	var a, b *fakeRouter
	var port string
	for range 20 {
		a = startFakeRouter(t, "router-a")
		_, port, _ = net.SplitHostPort(a.addr[len("tcp://"):])
		var err error
		if b, err = startFakeRouterAt(t, "router-b", "tcp://127.0.0.2:"+port); err == nil {
			break
		}
	}
	if b == nil {
		t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	}
	dns.Set("routers.test", "127.0.0.1")
	dir := t.TempDir()
	cfg := testWriterConfig(dir, "dns+tcp://routers.test:"+port)
	cfg.Resolve = endpoints.Config{Interval: 100 * time.Millisecond, Server: dns.Addr}
	r := startWriter(t, cfg, nil)
	waitFor(t, 10*time.Second, "subscribed to router a", func() bool { return a.subscriber() == "lake" })
	if b.subscribes() != 0 {
		t.Fatal("subscribed to router b before DNS listed it")
	}

	dns.Set("routers.test", "127.0.0.1", "127.0.0.2")
	waitFor(t, 10*time.Second, "subscribed to router b", func() bool { return b.subscriber() == "lake" })
	recs := makeRecords(50, 5, 1)
	b.deliver(1, entriesOf(t, "router-b", recs, 10))
	waitFor(t, 15*time.Second, "router b's records in the lake", func() bool {
		return len(rowKeys(readLake(t, cfg.Lake.Dir))) == len(recs)
	})

	dns.Set("routers.test", "127.0.0.2")
	// Router a no longer hears from the writer: a window of three
	// heartbeats with no subscribe.
	waitFor(t, 10*time.Second, "router a dropped", func() bool {
		n := a.subscribes()
		time.Sleep(3 * forward.SubscribeHeartbeat)
		return a.subscribes() == n
	})
	if got := r.metric(r.w.m.routersUp); got != 1 {
		t.Errorf("routers up = %v; want 1", got)
	}
}
