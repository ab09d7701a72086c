package forward

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/queue"
)

// TestDrainerStress: appenders fill a queue with tiny segments while a
// drainer sends it to a router that answers busy, drops acks, acks late and
// out of order; the drainer and queue are stopped and reopened now and then.
// Every entry that leaves the queue must have been stored by the router,
// and the queue must drain.
func TestDrainerStress(t *testing.T) {
	if testing.Short() {
		t.Skip("stress")
	}
	noLeaks(t)
	dir := t.TempDir()
	opts := queue.Options{Sync: queue.SyncNever, ItemsPerSegment: 4, MaxRecordBytes: 4 << 10, RemovalSyncInterval: time.Millisecond}
	fr := startFakeRouter(t)

	var (
		mu       sync.Mutex
		stored   = map[string]bool{} // entry payloads the router stored
		appended = map[string]bool{}
	)
	var answering sync.WaitGroup
	routerCtx, stopRouter := context.WithCancel(context.Background())
	answering.Add(1)
	go func() {
		defer answering.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			var b fakeBatch
			select {
			case b = <-fr.batches:
			case <-routerCtx.Done():
				return
			}
			switch k := rng.IntN(20); {
			case k == 0:
				fr.reply(b.peer, Message{Type: TypeBusy, First: b.First, Last: b.Last, Reason: "busy"})
			case k == 1:
				// lost: neither stored nor answered
			default:
				mu.Lock()
				for _, e := range b.Entries {
					stored[string(e)] = true
				}
				mu.Unlock()
				switch {
				case k == 2:
					// stored, ack lost
				case k < 6:
					delay := time.Duration(rng.IntN(400)) * time.Millisecond
					go func() { // late, out of order
						time.Sleep(delay)
						fr.reply(b.peer, Message{Type: TypeAck, First: b.First, Last: b.Last})
					}()
				default:
					fr.reply(b.peer, Message{Type: TypeAck, First: b.First, Last: b.Last})
				}
			}
		}
	}()
	t.Cleanup(func() { stopRouter(); answering.Wait() })

	var id atomic.Int64
	for round := range 6 {
		q, err := queue.Open(dir, opts, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := fastConfig(fr.addr)
		cfg.MaxBatchBytes = 2 << 10
		d, err := NewDrainer(cfg, q, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		var wg sync.WaitGroup
		last := round == 5
		if !last {
			actx, astop := context.WithTimeout(context.Background(), 700*time.Millisecond)
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
					for actx.Err() == nil {
						n := 1 + r.IntN(3)
						ents := make([][]byte, n)
						for i := range ents {
							ents[i] = []byte(strconv.FormatInt(id.Add(1), 10) + "-" + string(make([]byte, r.IntN(200))))
						}
						if _, err := q.Append(context.Background(), ents...); err != nil {
							t.Errorf("append: %v", err)
							return
						}
						mu.Lock()
						for _, e := range ents {
							appended[string(e)] = true
						}
						mu.Unlock()
						time.Sleep(time.Duration(r.IntN(500)) * time.Microsecond)
					}
				}()
			}
			wg.Wait()
			astop()
		} else {
			deadline := time.Now().Add(30 * time.Second)
			for {
				n, _ := q.Depth()
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("queue did not drain: depth %d, inflight %d", n, q.Inflight())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		// Whatever is gone from the queue must be at the router.
		q2, err := queue.Open(dir, opts, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		present := map[string]bool{}
		for {
			b, err := q2.TryRead(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Entries) == 0 {
				break
			}
			for _, e := range b.Entries {
				present[string(e.Data)] = true
			}
		}
		q2.Close()
		mu.Lock()
		lost := 0
		for p := range appended {
			if !present[p] && !stored[p] {
				lost++
			}
		}
		mu.Unlock()
		if lost > 0 {
			t.Fatalf("round %d: %d entries gone from the queue, never stored", round, lost)
		}
	}
	t.Logf("%d entries appended", len(appended))
}
