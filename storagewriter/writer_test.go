package storagewriter

import (
	"runtime"
	"testing"
	"time"
)

// TestLakeEndToEnd: a fake router sends batches; every record reaches the
// lake, every batch is acked, a resent batch is not appended twice, and
// after a writer restart nothing is lost.
func TestLakeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-a")
	cfg := testWriterConfig(dir, rt.addr)
	r := startWriter(t, cfg, nil)

	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() == "lake" })
	waitFor(t, 10*time.Second, "ready", func() bool { return r.w.Ready() == nil })

	recs := makeRecords(600, 7, 1)
	entries := entriesOf(t, "router-a", recs, 20) // 30 entries
	rt.deliver(1, entries[:10])
	rt.deliver(11, entries[10:20])
	appended := r.metric(r.w.m.appended)
	if appended != 20 {
		t.Errorf("appended %v entries, want 20", appended)
	}
	// The same batch again, and an overlapping one: acked, not appended.
	rt.send(11, entries[10:20])
	waitFor(t, 10*time.Second, "resent batch dropped", func() bool { return r.metric(r.w.m.duplicates) == 10 })
	rt.send(15, entries[14:20])
	waitFor(t, 10*time.Second, "overlapping batch dropped", func() bool { return r.metric(r.w.m.duplicates) == 16 })
	if got := r.metric(r.w.m.appended); got != 20 {
		t.Errorf("after resends, appended %v entries, want 20", got)
	}
	waitFor(t, 15*time.Second, "records written", func() bool { return r.metric(r.w.m.recordsWritten) >= 400 })

	// Restart: the last batch arrives at the new writer.
	r.shutdown(t)
	r2 := startWriter(t, cfg, nil)
	waitFor(t, 10*time.Second, "resubscribe", func() bool { return r2.w.Ready() == nil })
	rt.deliver(21, entries[20:])
	waitFor(t, 15*time.Second, "every record in the lake", func() bool {
		return len(rowKeys(readLake(t, cfg.Lake.Dir))) == len(recs)
	})
	keys := rowKeys(readLake(t, cfg.Lake.Dir))
	for _, rec := range recs {
		if keys[recKey(rec)] != 1 {
			t.Fatalf("record %s found %d times in the lake", recKey(rec), keys[recKey(rec)])
		}
	}
	waitFor(t, 10*time.Second, "queue emptied", func() bool {
		n, _ := r2.w.q.Load().Depth()
		return n == 0
	})
	if !rt.isAcked(1, 30) {
		t.Error("not every batch acked")
	}
}

// TestRestartDrainsQueue: records appended (acked to the router) but not
// yet written when the writer stops are written after it restarts.
func TestRestartDrainsQueue(t *testing.T) {
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-b")
	cfg := testWriterConfig(dir, rt.addr)
	fs := &fakeSink{failFor: 1 << 30} // down for good in the first run
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	recs := makeRecords(100, 3, 1)
	rt.deliver(1, entriesOf(t, "router-b", recs, 10))
	waitFor(t, 10*time.Second, "a failed write", func() bool { return fs.attempts() > 0 })
	r.shutdown(t)
	if n := len(fs.written()); n != 0 {
		t.Fatalf("down sink wrote %d records", n)
	}

	r2 := startWriter(t, cfg, nil) // the real lake
	waitFor(t, 15*time.Second, "the queued records in the lake", func() bool {
		return len(rowKeys(readLake(t, cfg.Lake.Dir))) == len(recs)
	})
	waitFor(t, 10*time.Second, "queue emptied", func() bool {
		n, _ := r2.w.q.Load().Depth()
		return n == 0
	})
}

// TestNoGoroutineLeak: every goroutine the writer starts is gone once Run
// has returned.
func TestNoGoroutineLeak(t *testing.T) {
	rt := startFakeRouter(t, "router-g")
	dir := t.TempDir()
	before := runtime.NumGoroutine()
	fs := &fakeSink{failFor: 2}
	r := startWriter(t, testWriterConfig(dir, rt.addr), func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	rt.deliver(1, entriesOf(t, "router-g", makeRecords(50, 2, 1), 10))
	waitFor(t, 10*time.Second, "records written", func() bool { return len(fs.written()) == 50 })
	r.shutdown(t)
	waitFor(t, 5*time.Second, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// TestQueueFullAnswersBusy: a writer whose queue is full (its sink down)
// answers busy, stores nothing of the refused batch, and takes it once the
// sink drains the queue.
func TestQueueFullAnswersBusy(t *testing.T) {
	rt := startFakeRouter(t, "router-f")
	cfg := testWriterConfig(t.TempDir(), rt.addr)
	recs := makeRecords(40, 2, 1)
	entries := entriesOf(t, "router-f", recs, 20)
	cfg.QueueMaxBytes = int64(len(entries[0]) + 100) // room for one entry
	fs := &fakeSink{failFor: 4}
	r := startWriter(t, cfg, func(w *Writer) { w.newSink = fs.open })
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	rt.deliver(1, entries[:1])
	rt.send(2, entries[1:])
	waitFor(t, 10*time.Second, "a busy answer", func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.busy > 0
	})
	if got := r.metric(r.w.m.busy.WithLabelValues("full")); got == 0 {
		t.Error("busy{reason=full} not counted")
	}
	rt.deliver(2, entries[1:]) // resent until the sink is back and the queue has room
	waitFor(t, 30*time.Second, "every record written", func() bool { return len(fs.written()) == len(recs) })
}

// TestBatchLargerThanQueueBound: a batch whose entries together exceed the
// writer's whole queue bound (a router's log record of several entries,
// issue 20) is taken piecewise as the sink drains the queue, not refused
// as full for ever; every record reaches the lake once.
func TestBatchLargerThanQueueBound(t *testing.T) {
	rt := startFakeRouter(t, "router-g")
	cfg := testWriterConfig(t.TempDir(), rt.addr)
	recs := makeRecords(1200, 5, 1)
	entries := entriesOf(t, "router-g", recs, 100) // 12 entries
	total := 0
	for _, e := range entries {
		total += len(e)
	}
	cfg.QueueMaxBytes = int64(total / 3)
	if int64(len(entries[0])) > cfg.QueueMaxBytes/4 {
		t.Fatalf("entries of %d bytes: more than a quarter of the bound %d", len(entries[0]), cfg.QueueMaxBytes)
	}
	r := startWriter(t, cfg, nil)
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	rt.deliver(1, entries) // resent, as a router does, until acked
	waitFor(t, 15*time.Second, "every record in the lake", func() bool {
		return len(rowKeys(readLake(t, cfg.Lake.Dir))) == len(recs)
	})
	for k, n := range rowKeys(readLake(t, cfg.Lake.Dir)) {
		if n != 1 {
			t.Errorf("record %s in the lake %d times", k, n)
		}
	}
	if got := r.metric(r.w.m.appended); got != float64(len(entries)) {
		t.Errorf("appended %v entries, want %d", got, len(entries))
	}
}

// TestEntryOverBoundSaysSo: an entry larger than the writer's whole queue
// bound can never be stored: it is answered busy (over_bound), stored not
// at all, and said once in the log, not once per resend.
func TestEntryOverBoundSaysSo(t *testing.T) {
	rt := startFakeRouter(t, "router-h")
	cfg := testWriterConfig(t.TempDir(), rt.addr)
	entries := entriesOf(t, "router-h", makeRecords(200, 2, 1), 200) // one entry
	cfg.QueueMaxBytes = int64(len(entries[0]) / 2)
	logs := &syncBuf{}
	r := startWriterLogged(t, cfg, nil, logs)
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() != "" })
	const msg = "larger than the whole queue bound"
	waitFor(t, 10*time.Second, "three over_bound answers", func() bool {
		rt.send(1, entries)
		time.Sleep(20 * time.Millisecond) // the router's pace of resends
		return r.metric(r.w.m.busy.WithLabelValues("over_bound")) >= 3
	})
	if n := logs.count(msg); n != 1 {
		t.Errorf("%d log lines about the entry over the bound, want 1", n)
	}
	if got := r.metric(r.w.m.appended); got != 0 {
		t.Errorf("appended %v entries, want 0", got)
	}
	if rt.isAcked(1, 1) {
		t.Error("an entry that was not stored was acked")
	}
}
