package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// pipeline is the whole durable fan-out as real processes: a frontend, a
// router with the durable subscribers "influx" and "lake", one storage
// writer per sink, a livefeed on the router's live lane, a real influxd
// (testenv) and a lake directory. The simulator runs in this process.
type pipeline struct {
	t   *testing.T
	ctx context.Context
	dir string

	inf      *testenv.Influx
	influxd  *influxRestart // set once influxd has been restarted by the test
	lakeDir  string
	registry string
	frontURL string
	liveURL  string // ws://.../v1/live of the livefeed
	devToken string

	fe, rt, wInflux, wLake, lf *proc
}

// pipelineOpts are the knobs the tests turn.
type pipelineOpts struct {
	sim      sim.Config // devices, readings, rate ... (URLs and TokenSeed are filled in)
	livefeed bool
	// writeRegistry, if set, writes the registry file instead of the
	// simulator's devices.
	writeRegistry func(path string) error
	// follow, if set, is a drover api the frontend, the router and the
	// livefeed follow instead of a registry file (none is written: the
	// test registers the devices through the API).
	follow *apiProc
	// args are more flags per process ("frontend", "router",
	// "writer-influx", "writer-lake"), after the pipeline's own: a flag
	// given again wins.
	args map[string][]string
}

func startPipeline(t *testing.T, ctx context.Context, o pipelineOpts) (*pipeline, sim.Config) {
	t.Helper()
	p := &pipeline{t: t, ctx: ctx, dir: t.TempDir(), devToken: "e2e-dev-token-0123456789"}
	p.inf = testenv.InfluxD(t)
	p.lakeDir = filepath.Join(p.dir, "lake")

	sc := o.sim
	sc.TokenSeed = "storage"
	p.registry = filepath.Join(p.dir, "registry.json")
	write := func(path string) error { return sim.WriteRegistry(path, sc) }
	if o.writeRegistry != nil {
		write = o.writeRegistry
	}
	registryArgs := []string{"-registry", p.registry}
	if o.follow != nil {
		registryArgs = o.follow.followerArgs()
	} else if err := write(p.registry); err != nil {
		t.Fatal(err)
	}

	routerAddr, frontAddr, storeAddr, liveAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	p.rt = newProc(t, "router", "router", append([]string{
		"-id", uid("router-1"), "-listen", "tcp://" + routerAddr,
		"-live-pub", "tcp://" + liveAddr, "-store-listen", "tcp://" + storeAddr,
		"-queue-dir", filepath.Join(p.dir, "router"),
		"-subscribers", uid("lake") + "," + uid("influx"), "-fixed-subscribers"}, slices.Concat(registryArgs, o.args["router"])...)...)
	p.fe = newProc(t, "frontend", "frontend", append([]string{
		"-id", uid("frontend-1"), "-listen", frontAddr, "-routers", "tcp://" + routerAddr,
		"-queue-dir", filepath.Join(p.dir, "frontend"),
		"-rate", "1000", "-rate-burst", "1000", "-shutdown-grace", "5s"}, slices.Concat(registryArgs, o.args["frontend"])...)...)
	p.wInflux = newProc(t, "writer-influx", "storage-writer", append([]string{
		"-sink", "influx", "-name", uid("influx"), "-routers", "tcp://" + storeAddr,
		"-queue-dir", filepath.Join(p.dir, "writer-influx"), "-queue-max-bytes", "-1",
		"-influx-url", p.inf.URL, "-influx-database", p.inf.Database, "-influx-timeout", "5s",
		"-batch-records", "5000", "-batch-interval", "200ms"}, o.args["writer-influx"]...)...)
	p.wLake = newProc(t, "writer-lake", "storage-writer", append([]string{
		"-sink", "lake", "-name", uid("lake"), "-routers", "tcp://" + storeAddr,
		"-queue-dir", filepath.Join(p.dir, "writer-lake"), "-queue-max-bytes", "-1",
		"-lake-dir", p.lakeDir,
		"-batch-records", "5000", "-batch-interval", "200ms"}, o.args["writer-lake"]...)...)
	p.rt.start(ctx)
	p.wInflux.start(ctx)
	p.wLake.start(ctx)
	if o.livefeed {
		lfAddr := freeAddr(t)
		args := []string{"-id", uid("livefeed-1"), "-listen", lfAddr, "-routers", "tcp://" + liveAddr,
			"-dev-token-file", secretFile(t, p.devToken)}
		if o.follow != nil {
			args = slices.Concat(args, o.follow.followerArgs(), []string{"-cache-dir", filepath.Join(p.dir, "livefeed")})
		}
		p.lf = newProc(t, "livefeed", "livefeed", args...)
		p.lf.start(ctx)
		p.liveURL = "ws://" + lfAddr + "/v1/live"
	}
	p.fe.start(ctx)
	p.frontURL = "ws://" + frontAddr
	sc.URLs = []string{p.frontURL}
	return p, sc
}

// gauge scrapes one metric of a process; ok is false when the scrape fails
// or the series is absent.
func (p *pipeline) gauge(pr *proc, name string, labels map[string]string) (float64, bool) {
	m, err := pr.metrics(p.ctx)
	if err != nil {
		return 0, false
	}
	return metricValue(m, name, labels)
}

// waitDrained polls until every queue on the way is empty: the frontend's,
// the router's main queue and its subscriber queues, and both writers'
// queues, and each writer has written at least want records.
func (p *pipeline) waitDrained(timeout time.Duration, want uint64) {
	p.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for {
		var b strings.Builder
		ok := true
		check := func(pr *proc, name string, labels map[string]string, pred func(float64) bool) {
			v, found := p.gauge(pr, name, labels)
			fmt.Fprintf(&b, "%s %s%v=%v(found %v) ", pr.name, name, labels, v, found)
			ok = ok && found && pred(v)
		}
		zero := func(v float64) bool { return v == 0 }
		atLeast := func(v float64) bool { return v >= float64(want) }
		check(p.fe, "drover_queue_depth_entries", map[string]string{"queue": "frontend"}, zero)
		check(p.rt, "drover_queue_depth_entries", map[string]string{"queue": "router"}, zero)
		check(p.rt, "drover_queue_cursor_lag_entries", map[string]string{"queue": "router", "cursor": uid("influx")}, zero)
		check(p.rt, "drover_queue_cursor_lag_entries", map[string]string{"queue": "router", "cursor": uid("lake")}, zero)
		check(p.wInflux, "drover_queue_depth_entries", map[string]string{"queue": "writer-" + uid("influx")}, zero)
		check(p.wLake, "drover_queue_depth_entries", map[string]string{"queue": "writer-" + uid("lake")}, zero)
		check(p.wInflux, "drover_writer_records_written_total", nil, atLeast)
		check(p.wLake, "drover_writer_records_written_total", nil, atLeast)
		last = b.String()
		if ok {
			p.t.Logf("drained: %s", last)
			return
		}
		if time.Now().After(deadline) || p.ctx.Err() != nil {
			p.t.Fatalf("pipeline not drained within %v (want %d records written by each writer): %s", timeout, want, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkInflux asserts InfluxDB holds exactly one point per acked (device,
// seq) and nothing else: per device, count(seq) = count(distinct(seq)) =
// acked, min 1, max acked, and the raw list of seqs is 1..acked once each.
func (p *pipeline) checkInflux(acked map[string]uint64) {
	p.t.Helper()
	p.checkInfluxCounts(acked)

	// Every point, one by one: exactly one per (device, seq).
	series, err := p.inf.Exec(p.ctx, p.inf.Database, `SELECT seq FROM telemetry GROUP BY device`)
	if err != nil {
		p.t.Fatalf("influx point query: %v", err)
	}
	count := map[key]int{}
	points := 0
	for _, s := range series {
		for _, r := range s.Values {
			f, _ := testenv.Float(r[1])
			count[key{s.Tags["device"], uint64(f)}]++
			points++
		}
	}
	var bad []string
	for dev, hi := range acked {
		for seq := uint64(1); seq <= hi; seq++ {
			if n := count[key{dev, seq}]; n != 1 {
				bad = append(bad, fmt.Sprintf("%s/%d: %d points", dev, seq, n))
			}
		}
	}
	reportBad(p.t, "InfluxDB points per (device, seq)", bad)
	var total uint64
	for _, hi := range acked {
		total += hi
	}
	if uint64(points) != total {
		p.t.Fatalf("InfluxDB holds %d points, want exactly the %d acked readings", points, total)
	}
	p.t.Logf("InfluxDB: %d points in %d device series, exactly one per acked (device, seq)", points, len(series))
}

// checkInfluxCounts asserts, from per-device aggregates only, that
// InfluxDB holds exactly the acked readings: count(seq) = count(distinct
// seq) = acked with min 1 and max acked is the set 1..acked once each
// (what checkInflux then confirms point by point; a run of millions of
// points checks this alone).
func (p *pipeline) checkInfluxCounts(acked map[string]uint64) {
	p.t.Helper()
	series, err := p.inf.Exec(p.ctx, p.inf.Database,
		`SELECT count(seq) AS n, count(distinct(seq)) AS d, min(seq) AS lo, max(seq) AS hi FROM telemetry GROUP BY device`)
	if err != nil {
		p.t.Fatalf("influx aggregate query: %v", err)
	}
	type agg struct{ n, d, lo, hi int64 }
	got := map[string]agg{}
	for _, s := range series {
		if len(s.Values) != 1 {
			p.t.Fatalf("influx: device %q: %d rows of aggregates", s.Tags["device"], len(s.Values))
		}
		r := s.Values[0]
		num := func(i int) int64 { f, _ := testenv.Float(r[i]); return int64(f) }
		got[s.Tags["device"]] = agg{num(1), num(2), num(3), num(4)}
	}
	var bad []string
	for dev, hi := range acked {
		g := got[dev]
		if g.n != int64(hi) || g.d != int64(hi) || (hi > 0 && (g.lo != 1 || g.hi != int64(hi))) {
			bad = append(bad, fmt.Sprintf("%s: count %d distinct %d min %d max %d, want %d points seq 1..%d", dev, g.n, g.d, g.lo, g.hi, hi, hi))
		}
	}
	for dev := range got {
		if _, ok := acked[dev]; !ok {
			bad = append(bad, fmt.Sprintf("%s: in InfluxDB, not a simulated device", dev))
		}
	}
	reportBad(p.t, "InfluxDB aggregates per device", bad)
}

// duckdbScript reads the lake with DuckDB (the @duckdb/node-api module) the
// way an analyst would: hive partitioning, duplicates dropped by
// (device_id, seq).
const duckdbScript = `'use strict';
const duckdb = require(process.env.DUCKDB_NODE_API);
(async () => {
  const dir = process.argv[2];
  const inst = await duckdb.DuckDBInstance.create(':memory:');
  const conn = await inst.connect();
  const q = async (sql) => (await conn.runAndReadAll(sql)).getRowObjectsJson();
  await conn.run("CREATE VIEW lake AS SELECT * FROM read_parquet('" + dir + "/**/*.parquet', hive_partitioning = true)");
  const out = {};
  out.rows = Number((await q('SELECT count(*) AS n FROM lake'))[0].n);
  out.distinct = Number((await q('SELECT count(*) AS n FROM (SELECT DISTINCT device_id, seq FROM lake)'))[0].n);
  out.devices = (await q('SELECT device_id, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM ' +
    '(SELECT DISTINCT ON (device_id, seq) device_id, seq FROM lake ORDER BY device_id, seq) GROUP BY device_id ORDER BY device_id'))
    .map((r) => ({device: r.device_id, n: Number(r.n), lo: Number(r.lo), hi: Number(r.hi)}));
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((err) => { process.stderr.write(String(err && err.stack || err) + '\n'); process.exit(1); });
`

// checkLake reads the lake with DuckDB and asserts that, duplicates dropped
// by (device_id, seq), it holds exactly the acked set.
func (p *pipeline) checkLake(acked map[string]uint64) {
	p.t.Helper()
	node, module := testenv.DuckDBNode(p.t)
	script := filepath.Join(p.t.TempDir(), "lake_check.cjs")
	if err := os.WriteFile(script, []byte(duckdbScript), 0o644); err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(p.ctx, 90*time.Second)
	defer cancel()
	out := testenv.RunDuckDB(p.t, ctx, node, module, script, p.lakeDir)
	var got struct {
		Rows, Distinct int
		Devices        []struct {
			Device    string
			N, Lo, Hi int64
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		p.t.Fatalf("duckdb output %q: %v", out, err)
	}
	var total uint64
	for _, hi := range acked {
		total += hi
	}
	var bad []string
	seen := map[string]bool{}
	for _, d := range got.Devices {
		seen[d.Device] = true
		hi, ok := acked[d.Device]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s: in the lake, not a simulated device", d.Device))
			continue
		}
		if d.N != int64(hi) || d.Lo != 1 || d.Hi != int64(hi) {
			bad = append(bad, fmt.Sprintf("%s: %d distinct seqs, min %d max %d; want seq 1..%d", d.Device, d.N, d.Lo, d.Hi, hi))
		}
	}
	for dev, hi := range acked {
		if hi > 0 && !seen[dev] {
			bad = append(bad, fmt.Sprintf("%s: no rows in the lake, want seq 1..%d", dev, hi))
		}
	}
	reportBad(p.t, "lake (DuckDB, deduplicated by (device_id, seq))", bad)
	if uint64(got.Distinct) != total {
		p.t.Fatalf("lake holds %d distinct (device_id, seq), want exactly the %d acked", got.Distinct, total)
	}
	p.t.Logf("lake (DuckDB): %d rows, %d distinct (device_id, seq) = acked, %d devices with seq 1..acked; %d duplicate rows dropped",
		got.Rows, got.Distinct, len(got.Devices), got.Rows-got.Distinct)
}

func reportBad(t *testing.T, what string, bad []string) {
	t.Helper()
	if len(bad) == 0 {
		return
	}
	sort.Strings(bad)
	n := len(bad)
	if len(bad) > 20 {
		bad = bad[:20]
	}
	t.Fatalf("%s: %d problems (first %d):\n  %s", what, n, len(bad), strings.Join(bad, "\n  "))
}

// influxRestart is an influxd the test started again on the stopped
// testenv server's configuration: same data, WAL, meta and ports.
type influxRestart struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  bytes.Buffer
	mu   sync.Mutex
}

func (b *influxRestart) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out.Write(p)
}

// restartInflux starts influxd on the configuration testenv wrote
// (Dir/influxdb.conf) after inf.Stop(), and waits until it answers /ping.
// The ports are the same, so the writer's -influx-url stays right.
func (p *pipeline) restartInflux() {
	p.t.Helper()
	bin, err := testenv.InfluxDPath()
	if err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		r := &influxRestart{done: make(chan struct{})}
		cmd := exec.Command(bin, "run", "-config", filepath.Join(p.inf.Dir, "influxdb.conf"))
		cmd.Dir = p.inf.Dir
		cmd.Stdout, cmd.Stderr = r, r
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "INFLUXDB_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if err := cmd.Start(); err != nil {
			p.t.Fatalf("restart influxd: %v", err)
		}
		r.cmd = cmd
		go func() { cmd.Wait(); close(r.done) }()
		p.t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-r.done
			}
			if p.t.Failed() {
				r.mu.Lock()
				p.t.Logf("restarted influxd output:\n%s", r.out.String())
				r.mu.Unlock()
			}
		})
		c := &http.Client{Timeout: time.Second}
		for {
			resp, err := c.Get(p.inf.URL + "/ping")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusNoContent {
					p.influxd = r
					return
				}
			}
			select {
			case <-r.done:
			case <-time.After(20 * time.Millisecond):
				if time.Now().After(deadline) {
					p.t.Fatalf("restarted influxd not answering /ping within 30 s")
				}
				continue
			}
			break // exited: the port may still be in TIME_WAIT or held; try again
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			p.t.Fatalf("restarted influxd exited (attempt %d):\n%s", attempt, r.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ticker records the times a monotone counter increased, polled every
// 50 ms, so a test can ask for the longest time without an increase in a
// window.
type ticker struct {
	mu    sync.Mutex
	times []time.Time
}

func (k *ticker) add(at time.Time) {
	k.mu.Lock()
	k.times = append(k.times, at)
	k.mu.Unlock()
}

// longestGap returns the longest time in [from, to] without an event (the
// window's edges count as the ends of the first and last gap).
func (k *ticker) longestGap(from, to time.Time) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	prev := from
	var longest time.Duration
	for _, at := range k.times {
		if at.Before(from) {
			continue
		}
		if at.After(to) {
			break
		}
		if d := at.Sub(prev); d > longest {
			longest = d
		}
		prev = at
	}
	if d := to.Sub(prev); d > longest {
		longest = d
	}
	return longest
}

// watchAcks records when the fleet's acked count grows until ctx ends.
func watchAcks(ctx context.Context, fleet *sim.Fleet) *ticker {
	k := &ticker{}
	go func() {
		var last uint64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				var sum uint64
				for _, hi := range fleet.Acked() {
					sum += hi
				}
				if sum > last {
					last = sum
					k.add(now)
				}
			}
		}
	}()
	return k
}

// watchLive connects a client to the livefeed's /v1/live, subscribes to
// everything and records when an update (or snapshot) with vehicles
// arrives, reconnecting if the connection ends, until ctx ends.
func watchLive(ctx context.Context, t *testing.T, url, token string) (*ticker, *atomic.Int64) {
	t.Helper()
	k := &ticker{}
	msgs := new(atomic.Int64)
	connect := func() (*websocket.Conn, error) {
		h := http.Header{"Authorization": {"Bearer " + token}}
		c, resp, err := websocket.DefaultDialer.DialContext(ctx, url, h)
		if err != nil {
			if resp != nil {
				return nil, fmt.Errorf("%w (HTTP %s)", err, resp.Status)
			}
			return nil, err
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","id":"e2e"}`)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := connect()
	if err != nil {
		t.Fatalf("livefeed client: %v", err)
	}
	go func() {
		for ctx.Err() == nil {
			if c == nil {
				if c, err = connect(); err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
			}
			stop := context.AfterFunc(ctx, func() { c.Close() })
			for {
				_, b, err := c.ReadMessage()
				if err != nil {
					break
				}
				var m struct {
					Type     string            `json:"type"`
					Vehicles []json.RawMessage `json:"vehicles"`
				}
				if json.Unmarshal(b, &m) == nil && (m.Type == "update" || m.Type == "snapshot") && len(m.Vehicles) > 0 {
					k.add(time.Now())
					msgs.Add(1)
				}
			}
			stop()
			c.Close()
			c = nil
		}
	}()
	return k, msgs
}
