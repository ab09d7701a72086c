package livefeed

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestFeedFollowsDNS: with -routers dns+tcp://name:port the livefeed
// subscribes to every router the name resolves to, to one that appears
// while it runs (its vehicles show up on the map without a restart), and
// unsubscribes from one that disappears.
func TestFeedFollowsDNS(t *testing.T) {
	noLeaks(t)
	dns := testenv.DNS(t)
	var a, b *publisher
	var port string
	for range 20 {
		a = newPublisher(t, "router-a")
		_, port, _ = net.SplitHostPort(a.ep[len("tcp://"):])
		var err error
		if b, err = newPublisherAt(t, "router-b", "tcp://127.0.0.2:"+port); err == nil {
			break
		}
	}
	if b == nil {
		t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	}
	dns.Set("routers.test", "127.0.0.1")
	rf := startFeed(t, func(c *Config) {
		c.Routers = []string{"dns+tcp://routers.test:" + port}
		c.Resolve = endpoints.Config{Interval: 100 * time.Millisecond, Server: dns.Addr}
	})
	now := time.Now().UnixMilli()
	// A PUB drops what it sends before the subscription arrives: publish
	// until the vehicle shows.
	waitFor(t, 10*time.Second, "router a's vehicle", func() bool {
		a.publish(rec("veh-a", "f1", 1, now, 52.5, 13.4))
		time.Sleep(20 * time.Millisecond)
		return rf.store.len() == 1
	})

	dns.Set("routers.test", "127.0.0.1", "127.0.0.2")
	waitFor(t, 10*time.Second, "router b's vehicle", func() bool {
		b.publish(rec("veh-b", "f1", 1, now, 48.1, 11.6))
		time.Sleep(20 * time.Millisecond)
		return rf.store.len() == 2
	})
	if got := testutil.ToFloat64(rf.m.routersConnected); got != 2 {
		t.Errorf("routers connected = %v; want 2", got)
	}

	dns.Set("routers.test", "127.0.0.2")
	waitFor(t, 10*time.Second, "router a unsubscribed", func() bool { return testutil.ToFloat64(rf.m.routersConnected) == 1 })
	for range 20 { // nothing from router a reaches the feed any more
		a.publish(rec("veh-gone", "f1", 1, now, 40.4, -3.7))
		time.Sleep(10 * time.Millisecond)
	}
	// Router b is still heard, after what router a published.
	waitFor(t, 10*time.Second, "router b's new vehicle", func() bool {
		b.publish(rec("veh-c", "f1", 1, now, 48.2, 11.7))
		time.Sleep(20 * time.Millisecond)
		return rf.store.get("veh-c") != nil
	})
	if rf.Ready() != nil {
		t.Errorf("not ready with router b subscribed: %v", rf.Ready())
	}
	if rf.store.get("veh-gone") != nil {
		t.Error("a vehicle published by a router removed from the list reached the feed")
	}
}
