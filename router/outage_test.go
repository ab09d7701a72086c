package router

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// liveRecorder is a zmq4 SUB on the live lane that counts each reading it
// receives, by device and reading seq.
type liveRecorder struct {
	mu       sync.Mutex
	readings map[string]int
	messages int
}

func startLiveRecorder(t testing.TB, endpoint string) *liveRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(-1), zmq4.WithAutomaticReconnect(true))
	if err := sock.Dial(linkEndpoint(t, clusterlink.RoleLivefeed, clusterlink.LinkLive, endpoint)); err != nil {
		t.Fatal(err)
	}
	if err := sock.SetOption(zmq4.OptionSubscribe, LiveTopic); err != nil {
		t.Fatal(err)
	}
	l := &liveRecorder{readings: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			var pb telemetry.PublishBatch
			if len(msg.Frames) != 2 || proto.Unmarshal(msg.Frames[1], &pb) != nil {
				t.Errorf("live: undecodable message")
				continue
			}
			l.mu.Lock()
			l.messages++
			for _, er := range pb.Records {
				l.readings[fmt.Sprintf("%s/%d", er.Record.DeviceId, er.Record.Reading.GetSeq())]++
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); _ = zmqsock.Close(sock); <-done })
	return l
}

// got returns how many of the readings of entries [from, to) (makeEntry's
// numbering) were received, and the most times one was.
func (l *liveRecorder) got(from, to int) (n, most int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := from; k < to; k++ {
		for j := range recordsPerEntry {
			c := l.readings[fmt.Sprintf("dev-%05d/%d", k%1000, k*recordsPerEntry+j+1)]
			if c > 0 {
				n++
			}
			most = max(most, c)
		}
	}
	return n, most
}

// TestLiveGoesOnWhileSubscriberFull: a durable subscriber that is not there
// fills its cursor's bound at the router; the live lane and the other
// durable subscriber go on all the same, while the log holds the absent
// one's backlog; once it comes, every reading reaches both durable
// subscribers, and the live lane has offered none twice.
func TestLiveGoesOnWhileSubscriberFull(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake", "influx"}
	cfg.SubscriberQueueMaxBytes = 64 << 10
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	live := startLiveRecorder(t, rt.LiveAddr())
	influx := startSub(t, rt.StoreAddr(), "influx", true) // lake is not there yet
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	rnd := rand.New(rand.NewPCG(9, 9))

	// Entries one at a time until the live SUB has joined (a PUB sends
	// nothing to a SUB before its subscription arrives).
	waitFor(t, 10*time.Second, "the live subscriber to receive", func() bool {
		fe.appendN(t, 1, 1, rnd)
		n, _ := live.got(0, fe.n)
		return n > 0
	})
	// Then enough for lake's cursor to pass its 64 KiB bound.
	fe.appendN(t, 200, 20, rnd)
	waitFor(t, 10*time.Second, "lake's cursor to be full", func() bool {
		return metric(t, rt.reg, "drover_queue_cursor_fill_ratio", "cursor", "lake") >= 1 && rt.mainDepth() > 0
	})
	fullAt := fe.n

	// While it is full, new readings reach the live lane and influx.
	const more = 300
	fe.appendN(t, more, 20, rnd)
	waitFor(t, 10*time.Second, "the live lane to offer what arrived after lake's cursor was full", func() bool {
		n, _ := live.got(fullAt, fullAt+more)
		return n == more*recordsPerEntry
	})
	waitFor(t, 10*time.Second, "influx to receive every reading while lake is full", func() bool {
		d, _ := influx.counts()
		return d == fe.n*recordsPerEntry
	})
	if d := rt.mainDepth(); d == 0 {
		t.Fatalf("the log let go of lake's backlog")
	}

	// lake comes: everything drains, to both.
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	total := fe.n * recordsPerEntry
	for _, s := range []*fakeSub{lake, influx} {
		waitFor(t, 30*time.Second, s.name+" to receive every reading", func() bool {
			d, _ := s.counts()
			return d == total
		})
	}
	waitFor(t, 10*time.Second, "router queues to empty", func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("lake") == 0 && rt.subDepth("influx") == 0
	})
	n, most := live.got(0, fe.n)
	if most > 1 {
		t.Errorf("a reading reached the live lane %d times: offered again on a retry or when the fan-out caught up", most)
	}
	t.Logf("live: %d of %d readings (those before its subscription joined are not sent to it), %v published, %v dropped",
		n, total, metric(t, rt.reg, "drover_router_live_published_total"), metric(t, rt.reg, "drover_router_live_dropped_total"))
	misses := 0
	for k := range fe.n {
		if k%1000 >= 500 { // testRegistry knows dev-00000..dev-00499
			misses += recordsPerEntry
		}
	}
	if got := metric(t, rt.reg, "drover_router_enrichment_misses_total"); got != float64(misses) {
		t.Errorf("enrichment misses = %v, want %d: counted once per reading fanned out", got, misses)
	}
}
