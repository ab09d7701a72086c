package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// key is one reading's identity: (device, device sequence).
type key struct {
	device string
	seq    uint64
}

// stored is what a router's queue holds: how many times each reading is in
// it, and in how many entries (batches) from which senders.
type stored struct {
	count   map[key]int
	entries int
	records int
	// senders holds, per sender, the sender's queue sequences the router
	// stored: a gap between two of them (other than a restart's
	// reservation jump) is a batch the sender removed unstored.
	senders map[string]*forward.SeqSet
	// subscribers names the durable subscribers the router registered.
	subscribers []string
}

// readRouterQueue opens a stopped router's queue directory and counts the
// readings in it, without removing anything: its main queue and, should a
// durable subscriber have registered (a storage writer of another test that
// reached this router's store lane on a port it had known, say), the queues
// the router keeps for it, to which the fan-out moved what it took from the
// main queue.
func readRouterQueue(t testing.TB, dir string) stored {
	t.Helper()
	s := stored{count: map[key]int{}, senders: map[string]*forward.SeqSet{}}
	readQueue(t, dir, func(seq uint64, data []byte) {
		var batch telemetry.Batch
		if err := proto.Unmarshal(data, &batch); err != nil {
			t.Fatalf("router queue entry %d is not a Batch: %v", seq, err)
		}
		if batch.GetSender() == "" || batch.GetSeq() == 0 || batch.GetLastSeq() < batch.GetSeq() {
			t.Fatalf("router queue entry %d: batch header sender=%q seq=%d last_seq=%d", seq, batch.GetSender(), batch.GetSeq(), batch.GetLastSeq())
		}
		s.entries++
		ss := s.senders[batch.GetSender()]
		if ss == nil {
			ss = forward.NewSeqSet(0)
			s.senders[batch.GetSender()] = ss
		}
		ss.Add(batch.GetSeq(), batch.GetLastSeq())
		for _, r := range batch.GetRecords() {
			s.records++
			s.count[key{r.GetDeviceId(), r.GetReading().GetSeq()}]++
		}
	})
	subs, err := os.ReadDir(filepath.Join(dir, "subs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, d := range subs {
		if !d.IsDir() {
			continue
		}
		s.subscribers = append(s.subscribers, d.Name())
		readQueue(t, filepath.Join(dir, "subs", d.Name()), func(seq uint64, data []byte) {
			var pb telemetry.PublishBatch
			if err := proto.Unmarshal(data, &pb); err != nil {
				t.Fatalf("subscriber %s queue entry %d is not a PublishBatch: %v", d.Name(), seq, err)
			}
			for _, r := range pb.GetRecords() {
				s.records++
				s.count[key{r.GetRecord().GetDeviceId(), r.GetRecord().GetReading().GetSeq()}]++
			}
		})
	}
	return s
}

// readQueue calls fn with every entry of the queue in dir, removing nothing.
func readQueue(t testing.TB, dir string, fn func(seq uint64, data []byte)) {
	t.Helper()
	q, err := queue.Open(dir, queue.Options{Name: "check", MaxBytes: -1}, nil, nil)
	if err != nil {
		t.Fatalf("open queue %s: %v", dir, err)
	}
	defer q.Close()
	for {
		b, err := q.TryRead(4 << 20)
		if err != nil {
			t.Fatalf("read queue %s: %v", dir, err)
		}
		if len(b.Entries) == 0 {
			return
		}
		for _, e := range b.Entries {
			fn(e.Seq, e.Data)
		}
	}
}

// checkAcked asserts every reading the simulator saw acked, (device, seq)
// for seq 1..acked[device], is stored, and returns how many duplicates the
// store holds (copies beyond the first).
func checkAcked(t testing.TB, s stored, acked map[string]uint64) (ackedN, dups int) {
	t.Helper()
	var missing []string
	for dev, hi := range acked {
		for seq := uint64(1); seq <= hi; seq++ {
			ackedN++
			if s.count[key{dev, seq}] == 0 {
				if len(missing) < 20 {
					missing = append(missing, fmt.Sprintf("%s/%d", dev, seq))
				}
			}
		}
	}
	for _, n := range s.count {
		if n > 1 {
			dups += n - 1
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Logf("durable subscribers registered at the router: %v", s.subscribers)
		for name, ss := range s.senders {
			ivs := ss.Intervals()
			if len(ivs) > 50 {
				ivs = ivs[:50]
			}
			t.Logf("sender %s: the router holds its queue sequences %v", name, ivs)
		}
		t.Fatalf("acked readings missing from the router's queue (first %d shown): %v", len(missing), missing)
	}
	return ackedN, dups
}
