package storagewriter

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// TestRouterBatchesEnterQueueInOrder: a router has several store batches
// in flight, and the writer appends each from a goroutine of its own; they
// enter the writer's queue in the order they arrived, as they sit in the
// router's log. Before, they raced to the queue and a batch could land
// after later ones. The sink is down for the whole test, so that the queue
// keeps everything to read.
func TestRouterBatchesEnterQueueInOrder(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-o")
	cfg := testWriterConfig(dir, rt.addr)
	fs := &fakeSink{failFor: 1 << 30}
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })

	const batches = 60
	entries := entriesOf(t, "router-o", makeRecords(batches, 3, 1), 1)
	for i, e := range entries {
		rt.send(uint64(i+1), [][]byte{e})
	}
	waitFor(t, 20*time.Second, "every batch acked", func() bool { return rt.isAcked(1, batches) })

	var got []uint64
	err := r.w.q.Load().Scan(context.Background(), func(e queue.Entry) error {
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(e.Data, &pb); err != nil {
			t.Fatalf("queue entry %d: %v", e.Seq, err)
		}
		got = append(got, pb.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != batches {
		t.Fatalf("%d batches in the queue, want %d", len(got), batches)
	}
	for i, seq := range got {
		if seq != uint64(i+1) {
			t.Fatalf("the batches entered the queue as %v, want 1..%d in order", got, batches)
		}
	}
}
