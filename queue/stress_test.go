package queue

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWindowStress drives the queue as a frontend does: many goroutines
// append while a consumer holds up to 16 batches, acks them in random order
// and gives some back; tiny segments make dque roll over and delete segment
// files all the time; the queue is closed and reopened between rounds. It
// checks that no entry is removed unless a batch holding it was acked, that
// the reader neither skips nor stalls (everything drains, Depth reaches 0),
// and that Depth counts what is really there after each reopen.
func TestWindowStress(t *testing.T) {
	for _, ips := range []int{2, 3, 8} {
		t.Run(fmt.Sprintf("ips%d", ips), func(t *testing.T) {
			windowStress(t, Options{ItemsPerSegment: ips, MaxRecordBytes: 4 << 10, Sync: SyncNever, RemovalSyncInterval: time.Millisecond}, 6, 400, 4096)
		})
	}
	// As the frontend: records up to 512 KiB (larger than the reader's
	// chunk), batches of 256 KiB, fsync, many appenders.
	for _, ips := range []int{2, 16} {
		t.Run(fmt.Sprintf("big-ips%d", ips), func(t *testing.T) {
			windowStress(t, Options{ItemsPerSegment: ips, RemovalSyncInterval: 5 * time.Millisecond}, 64, 450, 256<<10)
		})
	}
}

func windowStress(t *testing.T, opts Options, appenders, maxEntry, maxRead int) {
	dir := t.TempDir()
	ips := opts.ItemsPerSegment
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	var (
		mu       sync.Mutex
		appended = map[int]uint64{} // id -> seq, Append returned nil
		acked    = map[int]bool{}   // id was in an acked batch
		nextID   atomic.Int64
	)
	parseID := func(b []byte) int {
		s, _, _ := strings.Cut(string(b), "-")
		id, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("entry %q not one of ours", b)
		}
		return id
	}
	rng := rand.New(rand.NewPCG(uint64(ips), 1))
	for round := 0; round <= rounds; round++ {
		q := openT(t, dir, opts)
		last := round == rounds

		// After a reopen: what is there must be every appended, unacked
		// entry, and Depth must count exactly that.
		present := map[int]bool{}
		for _, e := range readAll(t, q) {
			present[parseID(e.Data)] = true
		}
		q.Rewind()
		mu.Lock()
		for id, seq := range appended {
			if !acked[id] && !present[id] {
				t.Fatalf("round %d: entry %d (seq %d) appended, never acked, gone", round, id, seq)
			}
		}
		mu.Unlock()
		if n, _ := q.Depth(); n != int64(len(present)) {
			t.Fatalf("round %d: Depth %d, readable %d", round, n, len(present))
		}

		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		if !last {
			for g := range appenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
					for ctx.Err() == nil {
						k := 1 + r.IntN(3)
						ids := make([]int, k)
						ents := make([][]byte, k)
						for i := range k {
							ids[i] = int(nextID.Add(1))
							ents[i] = []byte(strconv.Itoa(ids[i]) + "-" + strings.Repeat("x", r.IntN(maxEntry)))
						}
						seq, err := q.Append(context.Background(), ents...)
						if err != nil {
							t.Errorf("append: %v", err)
							return
						}
						mu.Lock()
						for i, id := range ids {
							appended[id] = seq + uint64(i)
						}
						mu.Unlock()
					}
				}()
			}
		}

		var held []Batch
		ack := func(b Batch) {
			mu.Lock()
			for _, e := range b.Entries {
				acked[parseID(e.Data)] = true
			}
			mu.Unlock()
			q.Ack(b)
		}
		deadline := time.Now().Add(time.Duration(50+rng.IntN(150)) * time.Millisecond)
		for time.Now().Before(deadline) {
			did, err := windowStep(q, rng, &held, maxRead, 6, ack)
			if err != nil {
				t.Fatal(err)
			}
			if !did {
				time.Sleep(50 * time.Microsecond)
			}
		}
		stop()
		wg.Wait()
		if !last {
			// Leave some batches unacked (or given back) across the close.
			for _, b := range held {
				if rng.IntN(2) == 0 {
					ack(b)
				}
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			continue
		}
		// Last round: drain everything; it must all come out and go.
		for _, b := range held {
			ack(b)
		}
		until := time.Now().Add(10 * time.Second)
		for {
			b, err := q.TryRead(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Entries) > 0 {
				ack(b)
				continue
			}
			if n, _ := q.Depth(); n == 0 {
				break
			}
			if time.Now().After(until) {
				n, _ := q.Depth()
				t.Fatalf("stalled: Depth %d, nothing to read, inflight %d", n, q.Inflight())
			}
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		for id, seq := range appended {
			if !acked[id] {
				t.Errorf("entry %d (seq %d) appended, never delivered, queue empty", id, seq)
			}
		}
		t.Logf("%d entries appended over %d rounds", len(appended), rounds)
		mu.Unlock()
		q.Close()
	}
}
