package alerts

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// TestRouterBatchesEnterQueueInOrder: the batches of one router enter the
// engine's queue in the order they arrived, however many are appended at
// once. Appends racing to the queue once put a batch after later ones, and
// the evaluator then took the overtaken readings for a late stretch when
// more than ReorderMax of a device's readings were held waiting for them
// (TestEngineDeliversEachAlertOnce failed that way, rarely).
func TestRouterBatchesEnterQueueInOrder(t *testing.T) {
	const secret = "s3cret-for-the-receiver"
	rv := startReceiver(t, secret)
	p := startPipeline(t, tripDevices(1))
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	writeRules(t, rulesPath, tripRules(rv.srv.URL, secret))
	cfg := testEngineConfig(t, t.TempDir(), []string{p.router.StoreAddr()}, rulesPath)
	cfg.SnapshotInterval = time.Hour // the queue keeps what it evaluated: the test reads it
	en := startEngine(t, cfg)
	var send func(forward.Message)
	waitFor(t, 10*time.Second, "a link", func() bool {
		if s := en.subs.Senders(); len(s) > 0 {
			send = s[0]
		}
		return send != nil
	})

	const batches = 60
	for seq := uint64(1); seq <= batches; seq++ {
		b, err := proto.Marshal(&telemetry.PublishBatch{Router: "router-x", Seq: seq})
		if err != nil {
			t.Fatal(err)
		}
		en.recv.Receive(send, forward.Message{Type: forward.TypeBatch, Sender: "router-x", First: seq, Last: seq, Entries: [][]byte{b}})
	}
	waitFor(t, 20*time.Second, "every batch appended", func() bool { return en.recv.Appended("router-x", 1, batches) })

	var got []uint64
	err := en.q.Load().Scan(context.Background(), func(e queue.Entry) error {
		if len(e.Data) == 0 || e.Data[0] != entryReadings {
			return nil
		}
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(e.Data[1:], &pb); err != nil {
			t.Fatalf("queue entry %d: %v", e.Seq, err)
		}
		if pb.Router == "router-x" {
			got = append(got, pb.Seq)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != batches {
		t.Fatalf("%d of router-x's batches in the queue, want %d", len(got), batches)
	}
	for i, seq := range got {
		if seq != uint64(i+1) {
			t.Fatalf("router-x's batches entered the queue as %v, want 1..%d in order", got, batches)
		}
	}
}
