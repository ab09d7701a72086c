package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// scaleCluster is the pipeline of the scale-out tests as separate
// processes: routers on 127.0.0.N that share their ports (one DNS name
// stands for all of them, as a headless Service's does), frontends, a lake
// writer, an influx writer (optional) and a livefeed, all following the
// routers through dns+tcp:// names served by a test DNS server:
//
//	ingest.drover.test   routers that take frontends' batches (drover-router-ingest)
//	routers.drover.test  every router that exists (drover-router)
type scaleCluster struct {
	t                   *testing.T
	dir, registry       string
	dns                 *testenv.DNSServer
	ingest, live, store string // the routers' shared ports
	routers             map[int]*proc
	frontends           []*proc
	frontURLs           []string
	lake, influx, lf    *proc
	lakeDir             string
	inf                 *testenv.Influx
}

const (
	dnsIngest  = "ingest.drover.test"
	dnsRouters = "routers.drover.test"
)

// newScaleCluster makes the processes (none started). withInflux adds the
// influx writer and a real InfluxDB.
func newScaleCluster(t *testing.T, sc sim.Config, frontends int, withInflux bool) *scaleCluster {
	t.Helper()
	c := &scaleCluster{t: t, dir: t.TempDir(), dns: testenv.DNS(t), routers: map[int]*proc{}}
	c.registry = filepath.Join(c.dir, "registry.json")
	if err := sim.WriteRegistry(c.registry, sc); err != nil {
		t.Fatal(err)
	}
	c.ingest, c.live, c.store = sharedPorts(t, 4)
	resolve := []string{"-dns-server", c.dns.Addr, "-resolve-interval", "1s"}
	for i := 1; i <= frontends; i++ {
		addr := freeAddr(t)
		c.frontURLs = append(c.frontURLs, "ws://"+addr)
		c.frontends = append(c.frontends, newProc(t, fmt.Sprintf("frontend-%d", i), "frontend", append([]string{
			"-id", uid(fmt.Sprintf("frontend-%d", i)), "-listen", addr, "-routers", "dns+tcp://" + dnsIngest + ":" + c.ingest,
			"-queue-dir", filepath.Join(c.dir, fmt.Sprintf("frontend-%d", i)), "-registry", c.registry,
			// A short lame duck: a rolling upgrade still moves the devices
			// gradually, without 10 s per frontend in the suite.
			"-rate", "1000", "-rate-burst", "1000", "-shutdown-grace", "5s", "-lame-duck", "2s"}, resolve...)...))
	}
	c.lakeDir = filepath.Join(c.dir, "lake")
	c.lake = newProc(t, "writer-lake", "storage-writer", append([]string{
		"-sink", "lake", "-name", uid("lake"), "-routers", "dns+tcp://" + dnsRouters + ":" + c.store,
		"-queue-dir", filepath.Join(c.dir, "writer-lake"), "-lake-dir", c.lakeDir,
		"-batch-records", "2000", "-batch-interval", "200ms"}, resolve...)...)
	if withInflux {
		c.inf = testenv.InfluxD(t)
		c.influx = newProc(t, "writer-influx", "storage-writer", append([]string{
			"-sink", "influx", "-name", uid("influx"), "-routers", "dns+tcp://" + dnsRouters + ":" + c.store,
			"-queue-dir", filepath.Join(c.dir, "writer-influx"), "-influx-url", c.inf.URL, "-influx-database", c.inf.Database,
			"-batch-records", "2000", "-batch-interval", "200ms"}, resolve...)...)
	}
	c.lf = newProc(t, "livefeed", "livefeed", append([]string{
		"-id", uid("livefeed"), "-listen", freeAddr(t), "-routers", "dns+tcp://" + dnsRouters + ":" + c.live,
		"-dev-token-file", secretFile(t, "scale-token-0123456789")}, resolve...)...)
	return c
}

// subscribers is the routers' -subscribers.
func (c *scaleCluster) subscribers() string {
	s := uid("lake")
	if c.influx != nil {
		s += "," + uid("influx")
	}
	return s
}

// router makes router n (not started) on 127.0.0.n with the shared ports.
func (c *scaleCluster) router(n int) *proc {
	host := fmt.Sprintf("127.0.0.%d", n)
	p := newProc(c.t, fmt.Sprintf("router-%d", n), "router",
		"-id", uid(fmt.Sprintf("router-%d", n)),
		"-listen", "tcp://"+host+":"+c.ingest, "-live-pub", "tcp://"+host+":"+c.live, "-store-listen", "tcp://"+host+":"+c.store,
		"-queue-dir", filepath.Join(c.dir, fmt.Sprintf("router-%d", n)), "-registry", c.registry,
		"-subscribers", c.subscribers())
	c.routers[n] = p
	return p
}

// publish sets the DNS names: ingest lists the routers that take
// frontends' batches, all every router.
func (c *scaleCluster) publish(ingest, all []int) {
	addrs := func(ns []int) []string {
		var out []string
		for _, n := range ns {
			out = append(out, fmt.Sprintf("127.0.0.%d", n))
		}
		return out
	}
	c.dns.Set(dnsIngest, addrs(ingest)...)
	c.dns.Set(dnsRouters, addrs(all)...)
}

// gauge scrapes one series of a process, summed over matching series.
func gauge(ctx context.Context, p *proc, name string, labels map[string]string) float64 {
	m, err := p.metrics(ctx)
	if err != nil {
		return -1
	}
	v, ok := metricValue(m, name, labels)
	if !ok {
		return -1
	}
	return v
}

// depth is the entries a process's queues hold, -1 when it cannot say.
func depth(ctx context.Context, p *proc) float64 {
	return gauge(ctx, p, "drover_queue_depth_entries", nil)
}

// sharedPorts returns three ports free on 127.0.0.1 to 127.0.0.n.
func sharedPorts(t *testing.T, n int) (string, string, string) {
	t.Helper()
	free := func() string {
		for range 100 {
			_, port, _ := net.SplitHostPort(freeAddr(t))
			ok := true
			for i := 2; i <= n && ok; i++ {
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%s", i, port))
				if err != nil {
					ok = false
					continue
				}
				l.Close()
			}
			if ok {
				return port
			}
		}
		t.Fatal("no port free on every 127.0.0.N")
		return ""
	}
	return free(), free(), free()
}

// TestScaleOutRouters: routers come and go while devices send, and every
// other process follows through DNS without a restart.
//
//  1. One router; 2 frontends, a lake writer and a livefeed find it
//     through dns+tcp:// names; devices send.
//  2. Scale out: a second router starts and joins both names. Every
//     frontend connects to it and sends it batches; the writer subscribes
//     and receives its data; the livefeed subscribes.
//  3. Scale in, the documented way (docs/deploy.md, "Scale-in"): the first
//     router leaves the ingest name only (drover.io/ingest=off); frontends
//     stop sending to it within the resolve interval; the writer empties
//     its queues; then it stops and leaves the other name.
//
// Nothing acked is lost, and the removed router's volume holds nothing.
func TestScaleOutRouters(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.FrameReadings, sc.Window = 400, 5, 1, 8
	sc.TokenSeed = "scale-out"
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	sc.ConnectRate = 400
	c := newScaleCluster(t, sc, 2, false)

	r1 := c.router(1)
	c.publish([]int{1}, []int{1})
	r1.start(ctx)
	c.lake.start(ctx)
	c.lf.start(ctx)
	for _, f := range c.frontends {
		f.start(ctx)
	}
	sc.URLs = c.frontURLs
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()
	waitFor(t, time.Minute, "the fleet acked", func() bool { return fleet.Stats().Acked > uint64(5*sc.Devices) })

	// Scale out.
	r2 := c.router(2)
	r2.start(ctx)
	c.publish([]int{1, 2}, []int{1, 2})
	t.Logf("router-2 added at %d readings acked", fleet.Stats().Acked)
	for _, f := range c.frontends {
		waitFor(t, 30*time.Second, f.name+" connected to both routers", func() bool {
			return gauge(ctx, f, "drover_forward_routers_up", nil) == 2
		})
	}
	waitFor(t, 30*time.Second, "the lake writer subscribed to both routers", func() bool {
		return gauge(ctx, c.lake, "drover_writer_routers_up", nil) == 2
	})
	waitFor(t, 30*time.Second, "the livefeed subscribed to both routers", func() bool {
		return gauge(ctx, c.lf, "drover_livefeed_routers_connected", nil) == 2
	})
	// Which router a frontend sends to is its preference (a hash of its id
	// and the router's address): router-2 may get no batch yet. Once
	// router-1 leaves the ingest name below, it gets them all.

	// Scale in: drain router-1 first, then stop it.
	c.publish([]int{2}, []int{1, 2})
	t.Logf("router-1 out of the ingest name at %d readings acked", fleet.Stats().Acked)
	for _, f := range c.frontends {
		waitFor(t, 30*time.Second, f.name+" dropped router-1", func() bool {
			return gauge(ctx, f, "drover_endpoints", map[string]string{"consumer": "frontend"}) == 1
		})
	}
	// Its volume holds nothing when it stops: every queue empty.
	waitFor(t, time.Minute, "router-1 drained (its queues empty, three scrapes)", func() bool {
		for range 3 {
			if depth(ctx, r1) != 0 {
				return false
			}
			time.Sleep(300 * time.Millisecond)
		}
		return true
	})
	waitFor(t, time.Minute, "router-2 storing every batch and the writer taking them", func() bool {
		return gauge(ctx, r2, "drover_router_subscriber_acked_batches_total", nil) > 0
	})
	r1.stop(30 * time.Second)
	c.publish([]int{2}, []int{2})
	waitFor(t, 30*time.Second, "the writer down to one router", func() bool {
		return gauge(ctx, c.lake, "drover_endpoints", nil) == 1
	})
	t.Logf("router-1 removed at %d readings acked", fleet.Stats().Acked)
	time.Sleep(3 * time.Second) // devices go on sending to router-2 only

	stopFleet()
	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	acked := fleet.Acked()
	waitFor(t, 2*time.Minute, "the pipeline drained", func() bool {
		for _, p := range append([]*proc{r2, c.lake}, c.frontends...) {
			if depth(ctx, p) != 0 {
				return false
			}
		}
		return true
	})
	c.lake.stop(30 * time.Second)
	lc := chaosCheckLake(t, ctx, c.lakeDir, acked)
	if lc.Lost != 0 {
		t.Errorf("LOST: %d acked readings missing from the lake", lc.Lost)
	}
	st := fleet.Stats()
	t.Logf("scale-out: %d readings acked, lake %d rows (%d distinct, %d duplicates), lost %d; disconnects %v, resent %d",
		st.Acked, lc.Rows, lc.Distinct, lc.Rows-lc.Distinct, lc.Lost, st.Disconnects, st.Resent)
}

// TestRollingUpgrade replaces every process of a running pipeline, one at
// a time, by a newer build (another binary) while devices send: routers
// first (the protocol's rule: upgrade routers before frontends), then the
// writers, the livefeed and the frontends, each stopped with SIGTERM and
// its replacement ready before the next goes. Every process ends on the
// new build; nothing acked is lost in the lake or in InfluxDB; duplicates
// are counted and reported with the device-visible interruption.
func TestRollingUpgrade(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	newBin := filepath.Join(t.TempDir(), "drover-new")
	const newVersion = "v9.9.9-rolling"
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+newVersion, "-o", newBin, "../../cmd/drover")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the newer drover: %v\n%s", err, out)
	}

	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.FrameReadings, sc.Window = 400, 5, 1, 8
	sc.TokenSeed = "rolling"
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	sc.ConnectRate = 400
	c := newScaleCluster(t, sc, 2, true)
	routers := []*proc{c.router(1), c.router(2)}
	c.publish([]int{1, 2}, []int{1, 2})
	for _, p := range routers {
		p.start(ctx)
	}
	c.lake.start(ctx)
	c.influx.start(ctx)
	c.lf.start(ctx)
	for _, f := range c.frontends {
		f.start(ctx)
	}
	sc.URLs = c.frontURLs
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()
	waitFor(t, time.Minute, "the fleet acked", func() bool { return fleet.Stats().Acked > uint64(5*sc.Devices) })
	before := fleet.Stats()

	order := append(append([]*proc{}, routers...), c.lake, c.influx, c.lf)
	order = append(order, c.frontends...)
	start := time.Now()
	for _, p := range order {
		t0 := time.Now()
		p.stop(90 * time.Second)
		stopped := time.Since(t0)
		p.bin = newBin
		p.start(ctx)
		t.Logf("%-14s replaced: stopped in %v, new build ready %v later (%d readings acked so far)",
			p.name, stopped.Round(10*time.Millisecond), (time.Since(t0) - stopped).Round(10*time.Millisecond), fleet.Stats().Acked)
		if p.name == "router-1" || p.name == "router-2" {
			// Frontends and writers see the router back under its address
			// (the same here; a new one in Kubernetes) before the next goes.
			for _, f := range c.frontends {
				waitFor(t, 30*time.Second, f.name+" back on both routers", func() bool {
					return gauge(ctx, f, "drover_forward_routers_up", nil) == 2
				})
			}
		}
	}
	upgrade := time.Since(start)
	for _, p := range order {
		m, err := p.metrics(ctx)
		if err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		if _, ok := metricValue(m, "drover_build_info", map[string]string{"version": newVersion}); !ok {
			t.Errorf("%s does not run the new build", p.name)
		}
	}
	time.Sleep(3 * time.Second)
	stopFleet()
	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	st := fleet.Stats()
	acked := fleet.Acked()
	waitFor(t, 2*time.Minute, "the pipeline drained", func() bool {
		for _, p := range append(append([]*proc{c.lake, c.influx}, routers...), c.frontends...) {
			if depth(ctx, p) != 0 {
				return false
			}
		}
		return true
	})
	c.lake.stop(30 * time.Second)
	c.influx.stop(30 * time.Second)
	lc := chaosCheckLake(t, ctx, c.lakeDir, acked)
	ic := chaosCheckInflux(t, ctx, c.inf, acked)
	t.Logf("rolling upgrade of %d processes in %v: %d readings acked (%d before); lost: lake %d, InfluxDB %d; duplicates: lake %d rows, InfluxDB %d points beyond one per reading",
		len(order), upgrade.Round(time.Second), st.Acked, before.Acked, lc.Lost, ic.lost, lc.Rows-lc.Distinct, ic.dupPoints)
	t.Logf("device-visible interruption: longest wait for an ack %v (p99 %v), disconnects %v, failed connects %v, readings resent %d",
		st.AckLatency.Max.Round(time.Millisecond), st.AckLatency.P99.Round(time.Millisecond), st.Disconnects, st.ConnectFailures, st.Resent)
	if lc.Lost != 0 || ic.lost != 0 {
		t.Errorf("LOST acked readings: %d missing from the lake, %d from InfluxDB", lc.Lost, ic.lost)
	}
	if ic.dupPoints != 0 {
		t.Errorf("InfluxDB holds %d points beyond one per reading", ic.dupPoints)
	}
}
