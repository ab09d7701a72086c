package router

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// TestMigrationFromSubscriberQueues starts the router on a directory the
// router of before the log wrote (testdata/prelog, made by the previous
// code with testdata/prelog.gen_test.go.txt: 150 entries of 10 readings;
// lake never connected, so its queue filled and the fan-out blocked, the
// main queue holding the rest; influx acked all it got). Each subscriber's
// old queue is sent first and deleted once acked; then its cursor reads
// the log from the head, which holds exactly what the old fan-out had not
// given every subscriber: lake gets every reading, influx what the main
// queue held, and the log empties.
func TestMigrationFromSubscriberQueues(t *testing.T) {
	noLeaks(t)
	dir := filepath.Join(t.TempDir(), "router")
	if err := os.CopyFS(dir, os.DirFS("testdata/prelog")); err != nil {
		t.Fatal(err)
	}
	// What the old main queue holds: influx must get these readings.
	q, err := queue.Open(dir, queue.Options{Name: "check", MaxBytes: -1, MaxRecordBytes: recordBytes}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inMain := 0
	if err := q.Scan(context.Background(), func(e queue.Entry) error {
		n, err := forward.CountRecords(e.Data)
		inMain += n
		return err
	}); err != nil {
		t.Fatal(err)
	}
	q.Close()
	const total = 150 * recordsPerEntry
	if inMain == 0 || inMain >= total {
		t.Fatalf("the old main queue holds %d readings of %d: testdata/prelog is not the layout this test is about", inMain, total)
	}

	cfg := testConfig(dir, "router-old")
	cfg.Subscribers = []string{"lake", "influx"}
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	influx := startSub(t, rt.StoreAddr(), "influx", true)
	waitFor(t, 30*time.Second, "lake to receive every reading (its old queue, then the log)", func() bool {
		d, _ := lake.counts()
		return d == total
	})
	waitFor(t, 30*time.Second, "influx to receive what the old main queue held", func() bool {
		d, _ := influx.counts()
		return d == inMain
	})
	waitFor(t, 10*time.Second, "the log to empty and the old queues to go", func() bool {
		_, errL := os.Stat(filepath.Join(dir, "subs", "lake"))
		_, errI := os.Stat(filepath.Join(dir, "subs", "influx"))
		return rt.mainDepth() == 0 && errors.Is(errL, os.ErrNotExist) && errors.Is(errI, os.ErrNotExist)
	})
	for _, n := range []string{"lake", "influx"} {
		if _, err := os.Stat(filepath.Join(dir, "cursors", n)); err != nil {
			t.Errorf("cursor of %s: %v", n, err)
		}
	}
}
