package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestChaos is the proof that nothing acked is ever lost while drover
// processes die. It runs the whole pipeline as real processes — 2 frontends,
// 2 routers (-subscribers lake,influx), an influx and a lake storage writer
// (each connected to both routers' store lanes), a livefeed on both routers'
// live lanes and a real influxd (testenv) — and 2,000 simulated devices in
// this process, spread over both frontends. While the fleet sends, a
// controller kills -9 a random drover process every few seconds and starts
// it again, on the same queue and ports, after a short random downtime
// (influxd is never killed: TestStorageFaults covers its outage).
//
// At the end the fleet stops taking readings and drains (every reading
// acked), the pipeline drains (every queue on the way at depth 0), and every
// (device, seq) the simulator saw acked must be in InfluxDB (one point each)
// and in the lake (read with DuckDB, deduplicated by (device_id, seq)).
//
// Knobs (environment):
//
//	DROVER_CHAOS_DURATION   how long the fleet sends under kills (default 2m)
//	DROVER_CHAOS_DEVICES    simulated devices (default 2000)
//	DROVER_CHAOS_KILL_MIN   shortest time between kills (default 3s)
//	DROVER_CHAOS_KILL_MAX   longest time between kills (default 8s)
//	DROVER_CHAOS_DOWN_MIN   shortest downtime of a killed process (default 200ms)
//	DROVER_CHAOS_DOWN_MAX   longest downtime (default 2s)
//	DROVER_CHAOS_VICTIMS    comma-separated processes the controller may kill (default all:
//	                        frontend-1,frontend-2,router-1,router-2,writer-influx,writer-lake,livefeed)
//	DROVER_CHAOS_KEEP       set: keep the queues and the lake in a temp folder (logged)
//	DROVER_CHAOS_SEED       seed of the controller's choices (default random; logged)
//	DROVER_ARTIFACTS        folder for chaos-summary.json and chaos-summary.md
func TestChaos(t *testing.T) {
	dur := chaosEnvDuration(t, "DROVER_CHAOS_DURATION", 2*time.Minute)
	killMin := chaosEnvDuration(t, "DROVER_CHAOS_KILL_MIN", 3*time.Second)
	killMax := chaosEnvDuration(t, "DROVER_CHAOS_KILL_MAX", 8*time.Second)
	downMin := chaosEnvDuration(t, "DROVER_CHAOS_DOWN_MIN", 200*time.Millisecond)
	downMax := chaosEnvDuration(t, "DROVER_CHAOS_DOWN_MAX", 2*time.Second)
	devices := chaosEnvInt(t, "DROVER_CHAOS_DEVICES", 2000)
	seed := uint64(chaosEnvInt(t, "DROVER_CHAOS_SEED", 0))
	if seed == 0 {
		seed = rand.Uint64() >> 1
	}
	if killMax < killMin || downMax < downMin {
		t.Fatalf("chaos: want KILL_MIN ≤ KILL_MAX and DOWN_MIN ≤ DOWN_MAX")
	}
	const drain = 3 * time.Minute // fleet: how long to go on sending after dur
	rng := rand.New(rand.NewPCG(seed, 0xc4a05))
	t.Logf("chaos: %v with %d devices, a kill every %v-%v, down %v-%v, seed %d (DROVER_CHAOS_SEED)",
		dur, devices, killMin, killMax, downMin, downMax, seed)

	ctx, cancel := context.WithTimeout(context.Background(), dur+drain+8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	if os.Getenv("DROVER_CHAOS_KEEP") != "" { // keep the queues and the lake for a post-mortem
		if d, err := os.MkdirTemp("", "drover-chaos-"); err == nil {
			dir = d
			t.Logf("chaos: queues and lake kept in %s (DROVER_CHAOS_KEEP)", dir)
		}
	}
	inf := testenv.InfluxD(t)
	lakeDir := filepath.Join(dir, "lake")

	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.FrameReadings, sc.Window = devices, 1, 5, 4
	sc.Duration, sc.Drain = dur, drain
	sc.ConnectRate = 500
	sc.TokenSeed = "chaos"
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	registry := filepath.Join(dir, "registry.json")
	if err := sim.WriteRegistry(registry, sc); err != nil {
		t.Fatal(err)
	}

	// Two routers, each with its own queue and three endpoints.
	var routerEPs, storeEPs, liveEPs []string
	var routers []*proc
	for i := 1; i <= 2; i++ {
		in, store, live := "tcp://"+freeAddr(t), "tcp://"+freeAddr(t), "tcp://"+freeAddr(t)
		routerEPs, storeEPs, liveEPs = append(routerEPs, in), append(storeEPs, store), append(liveEPs, live)
		routers = append(routers, newProc(t, fmt.Sprintf("router-%d", i), "router",
			"-id", uid(fmt.Sprintf("router-%d", i)), "-listen", in, "-live-pub", live, "-store-listen", store,
			"-queue-dir", filepath.Join(dir, fmt.Sprintf("router-%d", i)), "-registry", registry,
			"-subscribers", uid("lake")+","+uid("influx"), "-fixed-subscribers"))
	}
	var fronts []*proc
	var frontURLs []string
	for i := 1; i <= 2; i++ {
		addr := freeAddr(t)
		frontURLs = append(frontURLs, "ws://"+addr)
		fronts = append(fronts, newProc(t, fmt.Sprintf("frontend-%d", i), "frontend",
			"-id", uid(fmt.Sprintf("frontend-%d", i)), "-listen", addr, "-routers", strings.Join(routerEPs, ","),
			"-queue-dir", filepath.Join(dir, fmt.Sprintf("frontend-%d", i)), "-registry", registry,
			"-rate", "1000", "-rate-burst", "1000", "-shutdown-grace", "5s"))
	}
	wInflux := newProc(t, "writer-influx", "storage-writer",
		"-sink", "influx", "-name", uid("influx"), "-routers", strings.Join(storeEPs, ","),
		"-queue-dir", filepath.Join(dir, "writer-influx"), "-queue-max-bytes", "-1",
		"-influx-url", inf.URL, "-influx-database", inf.Database, "-influx-timeout", "5s",
		"-batch-records", "5000", "-batch-interval", "200ms")
	wLake := newProc(t, "writer-lake", "storage-writer",
		"-sink", "lake", "-name", uid("lake"), "-routers", strings.Join(storeEPs, ","),
		"-queue-dir", filepath.Join(dir, "writer-lake"), "-queue-max-bytes", "-1",
		"-lake-dir", lakeDir, "-batch-records", "5000", "-batch-interval", "200ms")
	const devToken = "e2e-chaos-token-0123456789"
	lfAddr := freeAddr(t)
	lf := newProc(t, "livefeed", "livefeed",
		"-id", uid("livefeed-1"), "-listen", lfAddr, "-routers", strings.Join(liveEPs, ","), "-dev-token-file", secretFile(t, devToken))

	for _, p := range routers {
		p.start(ctx)
	}
	wInflux.start(ctx)
	wLake.start(ctx)
	lf.start(ctx)
	for _, p := range fronts {
		p.start(ctx)
	}
	all := []*proc{fronts[0], fronts[1], routers[0], routers[1], wInflux, wLake, lf}
	victims := all
	if v := os.Getenv("DROVER_CHAOS_VICTIMS"); v != "" {
		victims = nil
		for _, p := range all {
			if strings.Contains(","+v+",", ","+p.name+",") {
				victims = append(victims, p)
			}
		}
		if len(victims) == 0 {
			t.Fatalf("DROVER_CHAOS_VICTIMS=%q: none of frontend-1,2 router-1,2 writer-influx writer-lake livefeed", v)
		}
	}

	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	_, liveMsgs := watchLive(wctx, t, "ws://"+lfAddr+"/v1/live", devToken)

	sc.URLs = frontURLs
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan error, 1)
	start := time.Now()
	go func() { fleetDone <- fleet.Run(ctx) }()

	// The controller: kill -9 a random drover process, wait, start it again.
	var kills []chaosKill
	killsBy := map[string]int{}
	for {
		wait := killMin + time.Duration(rng.Int64N(int64(killMax-killMin)+1))
		if time.Since(start)+wait >= dur {
			break
		}
		select {
		case <-time.After(wait):
		case err := <-fleetDone:
			t.Fatalf("fleet stopped during the chaos phase at %v (%v)", time.Since(start), err)
		}
		victim := victims[rng.IntN(len(victims))]
		down := downMin + time.Duration(rng.Int64N(int64(downMax-downMin)+1))
		k := chaosKill{At: time.Since(start).Round(time.Millisecond).String(), Process: victim.name, AckedBefore: fleet.Stats().Acked}
		victim.kill9()
		time.Sleep(down)
		restart := time.Now()
		victim.start(ctx)
		k.Down = down.Round(time.Millisecond).String()
		k.ReadyAfter = time.Since(restart).Round(time.Millisecond).String()
		kills = append(kills, k)
		killsBy[victim.name]++
		t.Logf("kill %3d  %9s  kill -9 %-13s acked so far %9d, down %v, ready %v after restart",
			len(kills), k.At, k.Process, k.AckedBefore, k.Down, k.ReadyAfter)
	}
	if rest := dur - time.Since(start); rest > 0 {
		select {
		case <-time.After(rest):
		case err := <-fleetDone:
			t.Fatalf("fleet stopped during the chaos phase at %v (%v)", time.Since(start), err)
		}
	}
	chaosEnd := time.Since(start)
	stAtEnd := fleet.Stats()
	t.Logf("chaos phase over at %v: %d kills, %d readings acked; draining the fleet", chaosEnd.Round(time.Millisecond), len(kills), stAtEnd.Acked)

	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	fleetEnd := time.Since(start)
	st := fleet.Stats()
	acked := fleet.Acked()
	var ackedN uint64
	for _, hi := range acked {
		ackedN += hi
	}
	t.Logf("fleet drained at %v: generated %d, acked %d, unacked left %d, outbox drops %d, disconnects %v, connect failures %v",
		fleetEnd.Round(time.Millisecond), st.Generated, st.Acked, st.Outbox, st.OutboxDrops, st.Disconnects, st.ConnectFailures)
	if st.Acked != st.Generated || st.Outbox != 0 || st.OutboxDrops != 0 || ackedN != st.Acked {
		t.Errorf("fleet did not drain: generated %d, acked %d (sum of acked seqs %d), unacked %d, drops %d",
			st.Generated, st.Acked, ackedN, st.Outbox, st.OutboxDrops)
	}

	// Every queue on the way at depth 0, three scrapes in a row.
	chaosWaitDrained(t, ctx, 3*time.Minute, fronts, routers, wInflux, wLake)
	drained := time.Since(start)
	wstop()
	// Writers stopped cleanly: the lake is quiet (no compaction) while DuckDB reads it.
	wLake.stop(30 * time.Second)
	wInflux.stop(30 * time.Second)

	ic := chaosCheckInflux(t, ctx, inf, acked)
	lc := chaosCheckLake(t, ctx, lakeDir, acked)
	if ic.lost > 0 || lc.Lost > 0 {
		// Missing now: late (the drain check was wrong) or lost for good?
		// Start the writers again, give the routers 30 s, look once more.
		t.Errorf("after the drain: %d acked readings missing from InfluxDB, %d from the lake; checking again in 30 s", ic.lost, lc.Lost)
		wInflux.start(ctx)
		wLake.start(ctx)
		time.Sleep(30 * time.Second)
		chaosWaitDrained(t, ctx, 3*time.Minute, fronts, routers, wInflux, wLake)
		wLake.stop(30 * time.Second)
		wInflux.stop(30 * time.Second)
		ic = chaosCheckInflux(t, ctx, inf, acked)
		lc = chaosCheckLake(t, ctx, lakeDir, acked)
	}

	sum := chaosSummary{
		Duration: dur.String(), Devices: devices, Seed: seed,
		Kills: len(kills), KillsByProcess: killsBy,
		Generated: st.Generated, Acked: ackedN,
		InfluxPoints: ic.points, InfluxLost: ic.lost, InfluxExtra: ic.extra,
		LakeRows: lc.Rows, LakeDistinct: lc.Distinct, LakeLost: lc.Lost, LakeExtra: lc.Extra,
		LakeDuplicates:  lc.Rows - lc.Distinct,
		Lost:            max(ic.lost, lc.Lost),
		AckMax:          st.AckLatency.Max.Round(time.Millisecond).String(),
		AckP50:          st.AckLatency.P50.Round(time.Millisecond).String(),
		AckP99:          st.AckLatency.P99.Round(time.Millisecond).String(),
		ChaosThroughput: float64(stAtEnd.Acked) / chaosEnd.Seconds(),
		Resent:          st.Resent,
		Disconnects:     st.Disconnects,
		LiveMessages:    liveMsgs.Load(),
		FleetDrained:    (fleetEnd - chaosEnd).Round(time.Millisecond).String(),
		PipelineDrained: (drained - fleetEnd).Round(time.Millisecond).String(),
		KillLog:         kills,
	}
	art := chaosReport(t, sum)
	defer func() {
		if !t.Failed() {
			return
		}
		for _, p := range all { // the processes' logs, for the post-mortem
			if b, err := os.ReadFile(p.logPath); err == nil {
				os.WriteFile(filepath.Join(art, p.name+".log"), b, 0o644)
			}
		}
		t.Logf("process logs copied to %s", art)
	}()
	if sum.InfluxLost > 0 || sum.LakeLost > 0 {
		t.Errorf("LOST acked readings: %d missing from InfluxDB, %d from the lake (of %d acked)", ic.lost, lc.Lost, ackedN)
	}
	if ic.dupPoints > 0 {
		t.Errorf("InfluxDB holds %d points beyond one per (device, seq)", ic.dupPoints)
	}
	if ic.extra > 0 || lc.Extra > 0 {
		// Stored but never acked: allowed in principle (at least once), but
		// with the fleet drained every generated reading is acked.
		t.Logf("note: %d InfluxDB points and %d lake keys above the acked seqs", ic.extra, lc.Extra)
	}
}

// chaosKill is one entry of the kill log.
type chaosKill struct {
	At          string `json:"at"`
	Process     string `json:"process"`
	AckedBefore uint64 `json:"acked_before"`
	Down        string `json:"down"`
	ReadyAfter  string `json:"ready_after_restart"`
}

type chaosSummary struct {
	Duration        string            `json:"duration"`
	Devices         int               `json:"devices"`
	Seed            uint64            `json:"seed"`
	Kills           int               `json:"kills"`
	KillsByProcess  map[string]int    `json:"killsBy_process"`
	Generated       uint64            `json:"generated"`
	Acked           uint64            `json:"acked"`
	InfluxPoints    int64             `json:"influx_points"`
	InfluxLost      int64             `json:"influx_lost"`
	InfluxExtra     int64             `json:"influx_extra"`
	LakeRows        int64             `json:"lake_rows"`
	LakeDistinct    int64             `json:"lake_distinct"`
	LakeLost        int64             `json:"lake_lost"`
	LakeExtra       int64             `json:"lake_extra"`
	LakeDuplicates  int64             `json:"lake_duplicates"`
	Lost            int64             `json:"lost"`
	AckMax          string            `json:"ack_latency_max"`
	AckP50          string            `json:"ack_latency_p50"`
	AckP99          string            `json:"ack_latency_p99"`
	ChaosThroughput float64           `json:"throughput_acked_per_s"`
	Resent          uint64            `json:"resent"`
	Disconnects     map[string]uint64 `json:"disconnects"`
	LiveMessages    int64             `json:"live_messages"`
	FleetDrained    string            `json:"fleet_drain_time"`
	PipelineDrained string            `json:"pipeline_drain_time"`
	KillLog         []chaosKill       `json:"kill_log"`
}

// chaosReport logs the summary table and the kill log and writes both to
// $DROVER_ARTIFACTS (or the test's temp dir) as JSON and markdown.
func chaosReport(t *testing.T, s chaosSummary) (dir string) {
	t.Helper()
	var md strings.Builder
	fmt.Fprintf(&md, "| | |\n|---|---|\n")
	row := func(k string, v any) { fmt.Fprintf(&md, "| %s | %v |\n", k, v) }
	row("duration under kills", s.Duration)
	row("devices", s.Devices)
	row("kills (kill -9)", fmt.Sprintf("%d (%s)", s.Kills, chaosKillsBy(s.KillsByProcess)))
	row("readings acked", s.Acked)
	row("stored in InfluxDB (points)", s.InfluxPoints)
	row("stored in the lake (distinct (device_id, seq))", s.LakeDistinct)
	row("**lost** (acked, missing from InfluxDB / lake)", fmt.Sprintf("**%d** (%d / %d)", s.Lost, s.InfluxLost, s.LakeLost))
	row("lake duplicates before dedup (rows − distinct keys)", s.LakeDuplicates)
	row("readings resent by devices", s.Resent)
	row("longest wait for an ack (max)", s.AckMax)
	row("ack latency p50 / p99", s.AckP50+" / "+s.AckP99)
	row("throughput under kills (acked/s)", fmt.Sprintf("%.0f", s.ChaosThroughput))
	row("device disconnects by cause", fmt.Sprintf("%v", s.Disconnects))
	row("live messages to the live client", s.LiveMessages)
	row("fleet drain / pipeline drain", s.FleetDrained+" / "+s.PipelineDrained)
	row("controller seed", s.Seed)
	fmt.Fprintf(&md, "\nKill log (time since the fleet started, process, readings acked before the kill, downtime, time to ready after the restart):\n\n")
	fmt.Fprintf(&md, "| # | at | kill -9 | acked so far | down | ready after |\n|---|---|---|---|---|---|\n")
	for i, k := range s.KillLog {
		fmt.Fprintf(&md, "| %d | %s | %s | %d | %s | %s |\n", i+1, k.At, k.Process, k.AckedBefore, k.Down, k.ReadyAfter)
	}
	t.Logf("chaos summary:\n%s", md.String())

	dir = os.Getenv("DROVER_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	js, _ := json.MarshalIndent(s, "", "  ")
	for name, b := range map[string][]byte{"chaos-summary.json": js, "chaos-summary.md": []byte(md.String())} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("chaos summary written to %s", filepath.Join(dir, "chaos-summary.{json,md}"))
	return dir
}

func chaosKillsBy(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, m[n]))
	}
	return strings.Join(parts, ", ")
}

// chaosWaitDrained waits until every queue on the way is empty — each
// frontend's, each router's main queue and subscriber queues sub-influx and
// sub-lake, each writer's — in three scrapes in a row.
func chaosWaitDrained(t *testing.T, ctx context.Context, timeout time.Duration, fronts, routers []*proc, wInflux, wLake *proc) {
	t.Helper()
	type q struct {
		p     *proc
		queue string
	}
	var qs []q
	for _, p := range fronts {
		qs = append(qs, q{p, "frontend"})
	}
	for _, p := range routers {
		// The router's log is empty only once both subscribers' cursors
		// have passed everything in it.
		qs = append(qs, q{p, "router"})
	}
	qs = append(qs, q{wInflux, "writer-" + uid("influx")}, q{wLake, "writer-" + uid("lake")})
	deadline := time.Now().Add(timeout)
	var last string
	for good := 0; good < 3; {
		var b strings.Builder
		ok := true
		for _, x := range qs {
			v, found := -1.0, false
			if m, err := x.p.metrics(ctx); err == nil {
				v, found = metricValue(m, "drover_queue_depth_entries", map[string]string{"queue": x.queue})
			}
			fmt.Fprintf(&b, "%s/%s=%v ", x.p.name, x.queue, v)
			ok = ok && found && v == 0
		}
		last = b.String()
		if ok {
			good++
		} else {
			good = 0
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pipeline not drained within %v: %s", timeout, last)
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("pipeline drained: %s", last)
}

type chaosInflux struct {
	points, lost, extra, dupPoints int64
}

// chaosCheckInflux counts, per device, the acked seqs missing from InfluxDB
// (lost), points above the acked seq (extra) and points beyond one per seq.
// Per-device aggregates settle most devices; a device whose points reach
// above its acked seq is read point by point.
func chaosCheckInflux(t *testing.T, ctx context.Context, inf *testenv.Influx, acked map[string]uint64) chaosInflux {
	t.Helper()
	series, err := inf.Exec(ctx, inf.Database,
		`SELECT count(seq) AS n, count(distinct(seq)) AS d, min(seq) AS lo, max(seq) AS hi FROM telemetry GROUP BY device`)
	if err != nil {
		t.Fatalf("influx aggregate query: %v", err)
	}
	var r chaosInflux
	type agg struct{ n, d, lo, hi int64 }
	got := map[string]agg{}
	for _, s := range series {
		for _, v := range s.Values {
			num := func(i int) int64 { f, _ := testenv.Float(v[i]); return int64(f) }
			got[s.Tags["device"]] = agg{num(1), num(2), num(3), num(4)}
		}
	}
	var missing []string
	for dev, hi := range acked {
		g, ok := got[dev]
		r.points += g.n
		r.dupPoints += g.n - g.d
		switch {
		case !ok:
			r.lost += int64(hi)
		case g.lo >= 1 && g.hi <= int64(hi):
			r.lost += int64(hi) - g.d
		default: // points outside 1..hi: count the ones inside, one by one
			ss, err := inf.Exec(ctx, inf.Database, fmt.Sprintf(`SELECT seq FROM telemetry WHERE device = '%s'`, dev))
			if err != nil {
				t.Fatalf("influx points of %s: %v", dev, err)
			}
			seen := map[uint64]bool{}
			for _, s := range ss {
				for _, v := range s.Values {
					f, _ := testenv.Float(v[1])
					if seq := uint64(f); seq >= 1 && seq <= hi {
						seen[seq] = true
					} else {
						r.extra++
					}
				}
			}
			r.lost += int64(hi) - int64(len(seen))
		}
		if ok && g.d < int64(hi) && len(missing) < 20 {
			missing = append(missing, fmt.Sprintf("%s: %d distinct seqs (min %d max %d), acked 1..%d", dev, g.d, g.lo, g.hi, hi))
		}
	}
	for dev, g := range got {
		if _, ok := acked[dev]; !ok {
			r.extra += g.n
			r.points += g.n
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Logf("InfluxDB: devices short of their acked seqs (first %d):\n  %s", len(missing), strings.Join(missing, "\n  "))
	}
	t.Logf("InfluxDB: %d points in %d device series; %d acked readings missing, %d points beyond one per seq, %d above the acked seqs",
		r.points, len(got), r.lost, r.dupPoints, r.extra)
	return r
}

// chaosDuckDBScript reads the lake with DuckDB (hive partitioning), joins
// it with the acked seqs (a CSV of device_id, hi) and counts rows, distinct
// (device_id, seq), acked keys missing and keys above the acked seqs.
const chaosDuckDBScript = `'use strict';
const duckdb = require(process.env.DUCKDB_NODE_API);
(async () => {
  const [dir, ackedCSV] = process.argv.slice(2);
  const inst = await duckdb.DuckDBInstance.create(':memory:');
  const conn = await inst.connect();
  const q = async (sql) => (await conn.runAndReadAll(sql)).getRowObjectsJson();
  await conn.run("CREATE VIEW lake AS SELECT * FROM read_parquet('" + dir + "/**/*.parquet', hive_partitioning = true)");
  await conn.run("CREATE TABLE acked AS SELECT * FROM read_csv('" + ackedCSV + "', header = true, columns = {'device_id': 'VARCHAR', 'hi': 'BIGINT'})");
  await conn.run('CREATE TABLE keys AS SELECT DISTINCT device_id, CAST(seq AS BIGINT) AS seq FROM lake');
  const out = {};
  out.rows = Number((await q('SELECT count(*) AS n FROM lake'))[0].n);
  out.distinct = Number((await q('SELECT count(*) AS n FROM keys'))[0].n);
  out.short = (await q('SELECT a.device_id, a.hi, count(k.seq) AS have FROM acked a ' +
    'LEFT JOIN keys k ON k.device_id = a.device_id AND k.seq BETWEEN 1 AND a.hi ' +
    'GROUP BY a.device_id, a.hi HAVING count(k.seq) <> a.hi ORDER BY a.device_id'))
    .map((r) => ({device: r.device_id, hi: Number(r.hi), have: Number(r.have)}));
  out.missing = (await q('SELECT a.device_id, s.seq FROM acked a, generate_series(1, a.hi) AS s(seq) ' +
    'WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.device_id = a.device_id AND k.seq = s.seq) ORDER BY s.seq, a.device_id LIMIT 40'))
    .map((r) => r.device_id + '/' + r.seq);
  out.extra = Number((await q('SELECT count(*) AS n FROM keys k LEFT JOIN acked a ON a.device_id = k.device_id ' +
    'WHERE a.hi IS NULL OR k.seq < 1 OR k.seq > a.hi'))[0].n);
  process.stdout.write(JSON.stringify(out) + '\n');
})().catch((err) => { process.stderr.write(String(err && err.stack || err) + '\n'); process.exit(1); });
`

type chaosLake struct {
	Rows, Distinct, Extra int64
	Missing               []string
	Short                 []struct {
		Device   string
		Hi, Have int64
	}
	Lost int64 `json:"-"`
}

// chaosCheckLake reads the lake with DuckDB and counts the acked readings
// missing from it after dropping duplicates by (device_id, seq).
func chaosCheckLake(t *testing.T, ctx context.Context, lakeDir string, acked map[string]uint64) chaosLake {
	t.Helper()
	node, module := testenv.DuckDBNode(t)
	tmp := t.TempDir()
	script := filepath.Join(tmp, "chaos_lake.cjs")
	if err := os.WriteFile(script, []byte(chaosDuckDBScript), 0o644); err != nil {
		t.Fatal(err)
	}
	var csv strings.Builder
	csv.WriteString("device_id,hi\n")
	for dev, hi := range acked {
		fmt.Fprintf(&csv, "%s,%d\n", dev, hi)
	}
	ackedCSV := filepath.Join(tmp, "acked.csv")
	if err := os.WriteFile(ackedCSV, []byte(csv.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out := testenv.RunDuckDB(t, cctx, node, module, script, lakeDir, ackedCSV)
	var r chaosLake
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("duckdb output %q: %v", out, err)
	}
	var short []string
	for _, s := range r.Short {
		r.Lost += s.Hi - s.Have
		if len(short) < 20 {
			short = append(short, fmt.Sprintf("%s: %d of seq 1..%d", s.Device, s.Have, s.Hi))
		}
	}
	if len(short) > 0 {
		t.Logf("lake: devices short of their acked seqs (first %d):\n  %s", len(short), strings.Join(short, "\n  "))
		t.Logf("lake: first missing (device/seq): %v", r.Missing)
	}
	t.Logf("lake (DuckDB): %d rows, %d distinct (device_id, seq), %d duplicate rows; %d acked readings missing, %d keys above the acked seqs",
		r.Rows, r.Distinct, r.Rows-r.Distinct, r.Lost, r.Extra)
	return r
}

func chaosEnvDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		t.Fatalf("%s=%q: want a duration", name, v)
	}
	return d
}

func chaosEnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number", name, v)
	}
	return n
}
