package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/telemetry"
)

// queueHolding is what one queue directory holds, read offline.
type queueHolding struct {
	name       string
	readings   int   // records in its entries
	entryBytes int64 // what the queue's bound counts (entries and their length prefixes)
	diskBytes  int64 // its segment files
	count      map[key]int
}

// holdings reads the stopped queue in dir: each entry decodes as a
// telemetry.Batch (frontend, router main queue) or, with publish, as a
// telemetry.PublishBatch (subscriber and writer queues).
func holdings(t testing.TB, name, dir string, publish bool) queueHolding {
	t.Helper()
	h := queueHolding{name: name, count: map[key]int{}}
	readQueue(t, dir, func(seq uint64, data []byte) {
		h.entryBytes += int64(len(data) + uvarintLen(len(data)))
		if publish {
			var pb telemetry.PublishBatch
			if err := proto.Unmarshal(data, &pb); err != nil {
				t.Fatalf("%s: entry %d is not a PublishBatch: %v", name, seq, err)
			}
			for _, r := range pb.GetRecords() {
				h.readings++
				h.count[key{r.GetRecord().GetDeviceId(), r.GetRecord().GetReading().GetSeq()}]++
			}
			return
		}
		var b telemetry.Batch
		if err := proto.Unmarshal(data, &b); err != nil {
			t.Fatalf("%s: entry %d is not a Batch: %v", name, seq, err)
		}
		for _, r := range b.GetRecords() {
			h.readings++
			h.count[key{r.GetDeviceId(), r.GetReading().GetSeq()}]++
		}
	})
	h.diskBytes = dirBytes(t, filepath.Join(dir, "segments"))
	return h
}

func uvarintLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}

// dirBytes sums the sizes of the files in dir.
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// holdsAll fails unless h holds every acked reading, each exactly once.
func (h queueHolding) holdsAll(t *testing.T, acked map[string]uint64) {
	t.Helper()
	var bad []string
	total := 0
	for dev, hi := range acked {
		for seq := uint64(1); seq <= hi; seq++ {
			total++
			if n := h.count[key{dev, seq}]; n != 1 {
				bad = append(bad, fmt.Sprintf("%s/%d: %d copies", dev, seq, n))
			}
		}
	}
	if h.readings != total {
		bad = append(bad, fmt.Sprintf("%d readings in all, want the %d acked", h.readings, total))
	}
	reportBad(t, h.name+": every acked reading once", bad)
}

// dropFlag returns args without flag and its value.
func dropFlag(args []string, flag string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == flag {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// TestQueueBytesPerReading measures what one reading costs in each queue
// of its way, the figures behind the outage table of docs/reliability.md:
// it makes each queue hold every reading of a fleet in turn, with
// everything downstream of it stopped, and reads it offline: the entry
// bytes (what -queue-max-bytes counts) and the bytes of its files.
//
//  1. only the frontend runs: devices are acked into its queue;
//  2. a router that knows no durable subscriber: its fan-out holds the main
//     queue;
//  3. (none since the router's log: its subscribers read the main queue
//     through cursors, so stage 2 is what the router holds for them);
//  4. the influx writer with InfluxDB down: its own queue holds everything.
//
// At each stage the queue must hold every acked reading exactly once (the
// hops lose nothing on the way). One reading a frame, as a device at 1 Hz
// sends them: the frontend's and main queue's per-entry costs are then at
// their highest.
func TestQueueBytesPerReading(t *testing.T) {
	t.Parallel()
	const devices, perDevice = 200, 100
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = 20, 1, 8
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc})
	for _, pr := range []*proc{p.wInflux, p.wLake, p.rt} {
		pr.stop(30 * time.Second)
	}
	routerDir := filepath.Join(p.dir, "router")
	// A router that has never had a subscriber: the first start registered
	// them (they are kept in its directory).
	if err := os.RemoveAll(routerDir); err != nil {
		t.Fatal(err)
	}

	// 1. The frontend alone.
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	if st := fleet.Stats(); st.Acked != devices*perDevice {
		t.Fatalf("acked %d readings, want %d", st.Acked, devices*perDevice)
	}
	acked := fleet.Acked()
	p.fe.stop(30 * time.Second)
	var rows []queueHolding
	h := holdings(t, "frontend", filepath.Join(p.dir, "frontend"), false)
	h.holdsAll(t, acked)
	rows = append(rows, h)

	// 2. The main queue, held by a fan-out without subscribers.
	hold := newProc(t, "router-hold", "router")
	hold.args, hold.opsAddr = dropFlag(p.rt.args, "-subscribers"), p.rt.opsAddr
	hold.start(ctx)
	p.fe.start(ctx)
	waitFor(t, 60*time.Second, "the frontend's queue to move to the router", func() bool {
		v, ok := p.gauge(p.fe, "drover_queue_depth_entries", map[string]string{"queue": "frontend"})
		return ok && v == 0
	})
	p.fe.stop(30 * time.Second)
	hold.stop(30 * time.Second)
	h = holdings(t, "router main", routerDir, false)
	h.holdsAll(t, acked)
	rows = append(rows, h)

	// 3. (The router's log is read by a cursor per subscriber: there is
	// no queue per subscriber at the router to measure.)
	// 4. The influx writer's queue, InfluxDB down (it starts while
	// InfluxDB is up: a writer is ready once its sink has answered).
	p.wInflux.start(ctx)
	p.inf.Stop()
	p.rt.start(ctx)
	waitFor(t, 60*time.Second, "the router to send the log to the influx writer", func() bool {
		v, ok := p.gauge(p.rt, "drover_queue_cursor_lag_entries", map[string]string{"queue": "router", "cursor": uid("influx")})
		return ok && v == 0
	})
	p.wInflux.stop(30 * time.Second)
	p.rt.stop(30 * time.Second)
	h = holdings(t, "writer-influx", filepath.Join(p.dir, "writer-influx"), true)
	h.holdsAll(t, acked)
	rows = append(rows, h)

	var b strings.Builder
	n := float64(devices * perDevice)
	fmt.Fprintf(&b, "bytes per reading held, %d readings of %d devices, one reading a frame:\n", devices*perDevice, devices)
	fmt.Fprintf(&b, "| queue | entry bytes / reading (the bound counts these) | disk bytes / reading |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f |\n", r.name, float64(r.entryBytes)/n, float64(r.diskBytes)/n)
	}
	t.Log(b.String())
}
