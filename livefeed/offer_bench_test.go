package livefeed

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkOfferTake measures a client's bookkeeping alone, without the
// network: one op offers a batch of 25 vehicles' new states to each of 100
// clients that have all 1,000 vehicles on their maps (as after a snapshot)
// and takes them back, as their writers do. ns/update is per client and
// vehicle; the clients' maps are together larger than a core's caches, as
// with hundreds of clients.
//
//	go test -run '^$' -bench BenchmarkOfferTake -count 5 ./livefeed/
func BenchmarkOfferTake(b *testing.B) {
	const clients, vehicles, batch = 100, 1000, 25
	cfg := DefaultConfig()
	cfg.Links = testLinks
	cfg.SendInterval = 0
	cfg.MaxRate = 1000
	f, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, vehicles)
	for i := range ids {
		ids[i] = fmt.Sprintf("sim-%06d", i)
	}
	cs := make([]*client, clients)
	for k := range cs {
		c := &client{f: f, who: &principal{name: "b", scope: newScope([]string{AllFleets})}, wake: make(chan struct{}, 1),
			stopCh: make(chan struct{}), due: map[string]pendingItem{}, held: map[string]pendingItem{}, shown: map[string]int64{}}
		sub, cerr := newSubscription(&subscribeMsg{}, c.who.scope, &f.cfg)
		if cerr != nil {
			b.Fatal(cerr)
		}
		c.sub = sub
		cs[k] = c
	}
	// Every vehicle offered and taken once: on every client's map.
	now := time.Now().UnixNano()
	var tb takeBuf
	for i := 0; i < vehicles; i += batch {
		var chs []change
		for _, id := range ids[i : i+batch] {
			chs = append(chs, change{v: merge(nil, rec(id, "f", 1, 1, 1, 1), 0)})
		}
		for _, c := range cs {
			c.offer(chs, now)
			c.take(now, &tb)
		}
	}
	// The batches of the run, prepared: seq rises on every pass.
	batches := make([][]change, vehicles/batch*4)
	for n := range batches {
		for k := range batch {
			i := (n*batch + k) % vehicles
			seq := uint64(2 + (n*batch+k)/vehicles)
			batches[n] = append(batches[n], change{v: merge(nil, rec(ids[i], "f", seq, int64(seq), 1, 1), 0)})
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := range b.N {
		now += int64(time.Millisecond) // past the rate limit's 1 ms
		chs := batches[n%len(batches)]
		for _, c := range cs {
			c.offer(chs, now)
		}
		for _, c := range cs {
			c.take(now, &tb)
			if len(tb.items) != batch {
				b.Fatalf("took %d, want %d", len(tb.items), batch)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*clients*batch), "ns/update")
}
