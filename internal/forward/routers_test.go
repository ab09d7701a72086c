package forward

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestDrainerFollowsDNS: with -routers dns+tcp://name:port the drainer
// connects to every address of the name and follows it while it runs: a
// router that appears is used without a restart, and one that disappears
// (scaled in, or taken out of the frontends' Service to be drained) is let
// go at once — what it had not acked goes to another router long before
// any ack timeout, and nothing more is sent to it.
func TestDrainerFollowsDNS(t *testing.T) {
	noLeaks(t)
	dns := testenv.DNS(t)
	// Two routers on one port, on two loopback addresses: one DNS name
	// stands for both, as a headless Service's does for its pods.
	var r1, r2 *fakeRouter
	var port string
	for range 20 {
		r1 = startFakeRouter(t)
		_, port, _ = net.SplitHostPort(r1.addr[len("tcp://"):])
		var err error
		if r2, err = startFakeRouterAt(t, "tcp://127.0.0.2:"+port); err == nil {
			break
		}
	}
	if r2 == nil {
		t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	}
	dns.Set("routers.test", "127.0.0.1")

	q := openQueue(t, t.TempDir())
	cfg := fastConfig(fmt.Sprintf("dns+tcp://routers.test:%s", port))
	cfg.AckTimeout = time.Minute // only the removal may move a batch
	cfg.Resolve = endpoints.Config{Interval: 100 * time.Millisecond, Server: dns.Addr}
	d, reg := runDrainer(t, cfg, q)
	waitFor(t, 5*time.Second, "router 1 resolved and up", func() bool { up, total := d.Routers(); return up == 1 && total == 1 })

	appendEntries(t, q, "a")
	a := r1.next(5 * time.Second)
	r1.reply(a.peer, Message{Type: TypeAck, First: a.First, Last: a.Last})
	waitFor(t, 5*time.Second, "a acked", func() bool { n, _ := q.Depth(); return n == 0 })

	// r1 takes the next batch and never acks it; then DNS swaps r1 for r2.
	appendEntries(t, q, "b")
	b := r1.next(5 * time.Second)
	dns.Set("routers.test", "127.0.0.2")
	start := time.Now()
	again := r2.next(10 * time.Second)
	if again.First != b.First || again.Last != b.Last {
		t.Fatalf("r2 got %d..%d; want the batch r1 held, %d..%d", again.First, again.Last, b.First, b.Last)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the batch moved after %v: that is the ack timeout, not the removal", took)
	}
	waitFor(t, 5*time.Second, "only r2 listed", func() bool { up, total := d.Routers(); return up == 1 && total == 1 })
	r2.reply(again.peer, Message{Type: TypeAck, First: again.First, Last: again.Last})
	waitFor(t, 5*time.Second, "b acked by r2", func() bool { n, _ := q.Depth(); return n == 0 })

	// Scale out: both listed, both connected; r1 gets nothing it was not
	// chosen for, and every batch still lands and is acked.
	dns.Set("routers.test", "127.0.0.1", "127.0.0.2")
	waitFor(t, 5*time.Second, "both routers up", func() bool { up, total := d.Routers(); return up == 2 && total == 2 })
	appendEntries(t, q, "c")
	var c fakeBatch
	select {
	case c = <-r1.batches:
		r1.reply(c.peer, Message{Type: TypeAck, First: c.First, Last: c.Last})
	case c = <-r2.batches:
		r2.reply(c.peer, Message{Type: TypeAck, First: c.First, Last: c.Last})
	case <-time.After(5 * time.Second):
		t.Fatal("c went nowhere")
	}
	waitFor(t, 5*time.Second, "c acked", func() bool { n, _ := q.Depth(); return n == 0 })
	if got := counter(t, reg, "drover_forward_resent_batches_total", "reason", "router_down"); got != 1 {
		t.Errorf("resent{router_down} = %v; want 1 (the batch r1 held when it left)", got)
	}
	if got := counter(t, reg, "drover_endpoints", "consumer", "frontend"); got != 2 {
		t.Errorf("drover_endpoints{consumer=frontend} = %v; want 2", got)
	}
}

// TestPreferenceSpreads: frontends spread over the routers, and a router
// that joins takes over only the frontends that prefer it.
func TestPreferenceSpreads(t *testing.T) {
	routers := []string{"tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555", "tcp://10.0.0.3:5555"}
	first := func(sender string, rs []string) string {
		best, bp := "", uint64(0)
		for _, r := range rs {
			if p := preference(sender, r); best == "" || p > bp {
				best, bp = r, p
			}
		}
		return best
	}
	count := map[string]int{}
	moved := 0
	const senders = 3000
	for i := range senders {
		s := fmt.Sprintf("drover-frontend-%d", i)
		before := first(s, routers[:2])
		after := first(s, routers)
		count[after]++
		if before != after && after != routers[2] {
			t.Fatalf("%s moved from %s to %s when %s joined", s, before, after, routers[2])
		}
		if before != after {
			moved++
		}
	}
	for _, r := range routers {
		if n := count[r]; n < senders/3-senders/10 || n > senders/3+senders/10 {
			t.Errorf("%s preferred by %d of %d frontends; want about a third", r, n, senders)
		}
	}
	if moved < senders/3-senders/10 || moved > senders/3+senders/10 {
		t.Errorf("%d of %d frontends moved to the new router; want about a third", moved, senders)
	}
}
