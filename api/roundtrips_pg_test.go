package api

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestRoundTripsPostgres counts, with the store's own tracer
// (drover_api_db_round_trips_total), what each command step costs on a
// real PostgreSQL, keys cached: a create is BEGIN with its lock and
// WITH, then pg_notify with COMMIT (2); a group of k creates k + 1; a
// dispatch its read, then BEGIN with the mark, then pg_notify with COMMIT
// (3); a report 2. A create that hands its command to the frontend's
// poll (commands_handoff.go) costs what a create costs, and the poll that
// answers it none (the last report found nothing queued behind its
// command, so it woke no read). The api's background polls are set to an hour; what
// still runs beside a step now and then (a key's first use recorded, a
// prune at start: each a statement of its own, on a loaded machine late
// enough to land in a measured step) can only add to a step, so a step's
// cost is the least of three cycles: a round trip more in every cycle
// still fails it. And the group's creates committed, in seq order, with
// their events.
func TestRoundTripsPostgres(t *testing.T) {
	c := startCmdEnv(t, backends[1], func(cfg *Config) { cfg.Commands.Poll, cfg.FeedPoll = time.Hour, time.Hour })
	c.presence("fe-1", "truck-1", true, time.Now())
	c.dispatch("fe-1", "0s") // the first poll scans everything
	trips := func(f func()) int64 {
		before := c.srv.db.pgCount.roundTrips.Load()
		f()
		return c.srv.db.pgCount.roundTrips.Load() - before
	}
	// handed: the create hands the command to fe-1's poll; otherwise fe-1
	// has not polled lately, and the create queues it for a dispatch.
	handed := false
	cycle := func() (create, dispatch, report int64) {
		var cmd Command
		if !handed {
			c.srv.handoff.forget("fe-1")
		}
		create = trips(func() { cmd = c.send("truck-1", map[string]any{"name": "locate", "ttl": "1m"}) })
		if want := map[bool]string{true: CmdSent, false: CmdQueued}[handed]; cmd.State != want {
			t.Fatalf("created %s, want %s", cmd.State, want)
		}
		dispatch = trips(func() {
			if d := c.dispatch("fe-1", "5s"); len(d) != 1 || d[0].ID != cmd.ID {
				t.Fatalf("dispatch %+v, want %s", d, cmd.ID)
			}
		})
		report = trips(func() { c.report("fe-1", "truck-1", cmd.ID, "succeeded") })
		return
	}
	for _, h := range []bool{false, true} {
		handed = h
		cycle() // warm: keys cached, statements prepared on the connections used
		cycle()
		least := [3]int64{1 << 62, 1 << 62, 1 << 62}
		leastCommits := int64(1 << 62)
		for range 3 {
			commits := c.srv.db.pgCount.commits.Load()
			cr, d, r := cycle()
			least = [3]int64{min(least[0], cr), min(least[1], d), min(least[2], r)}
			leastCommits = min(leastCommits, c.srv.db.pgCount.commits.Load()-commits)
		}
		want, wantCommits := [3]int64{2, 3, 2}, int64(3)
		if handed {
			want, wantCommits = [3]int64{2, 0, 2}, 2
		}
		if least != want {
			t.Errorf("handed %v: round trips, least of three cycles: create %d, dispatch %d, report %d; want %v",
				handed, least[0], least[1], least[2], want)
		}
		if leastCommits != wantCommits {
			t.Errorf("handed %v: commits counted over a command's way: %d, want %d", handed, leastCommits, wantCommits)
		}
	}

	// A dispatch for several devices with work (one array parameter,
	// TestDispatchQueryOneStatement) finds every one of them, in the same
	// round trips as for one.
	for _, k := range []int{3, 7} {
		var ids []string
		for i := range k {
			dev := fmt.Sprintf("truck-w%d-%d", k, i)
			c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": dev}}, nil)
			c.presence("fe-1", dev, true, time.Now())
			c.srv.handoff.forget("fe-1")
			ids = append(ids, c.send(dev, map[string]any{"name": "locate", "ttl": "1m"}).ID)
		}
		var d []DispatchedCommand
		if n := trips(func() { d = c.dispatch("fe-1", "0s") }); n != 3 || len(d) != k {
			t.Errorf("a dispatch of %d devices' commands: %d round trips, %d commands; want 3, %d", k, n, len(d), k)
		}
		for _, cmd := range d {
			if !slices.Contains(ids, cmd.ID) {
				t.Errorf("dispatched %s, not one of %v", cmd.ID, ids)
			}
		}
	}

	// A group of k creates of truck-2, run as writeGroup runs one.
	p := newPrincipal("op", "op", "key", RoleAdmin, []string{allFleets})
	group := func(k int) []*groupReq {
		reqs := make([]*groupReq, k)
		for i := range reqs {
			reqs[i] = &groupReq{ctx: context.Background(), res: make(chan error, 1), fn: func(t *tx) error {
				cmd := Command{ID: newID("cmd_"), DeviceID: "truck-2", Name: "locate", State: CmdQueued,
					CreatedAt: msTime(t.ms()), CreatedBy: p.actor(), ExpiresAt: msTime(t.now.Add(time.Minute).UnixMilli())}
				if _, _, err := t.createPostgres(p, &cmd, "{}", "req", 100, nil); err != nil {
					return err
				}
				return t.notifyCommands(CommandEvent{ID: cmd.ID, DeviceID: "truck-2", State: CmdQueued, At: cmd.CreatedAt})
			}}
		}
		return reqs
	}
	c.srv.db.runGroup(group(5)) // warm the connection's statements
	const k = 5
	reqs := group(k)
	if n := trips(func() { c.srv.db.runGroup(reqs) }); n != k+1 {
		t.Errorf("a group of %d creates took %d round trips, want %d", k, n, k+1)
	}
	for i, r := range reqs {
		if err := <-r.res; err != nil {
			t.Fatalf("create %d of the group: %v", i, err)
		}
	}
	var n, maxSeq int64
	if err := c.srv.db.rdb.QueryRow(`SELECT COUNT(*), MAX(seq) FROM commands WHERE device_id = 'truck-2'`).Scan(&n, &maxSeq); err != nil {
		t.Fatal(err)
	}
	if n != 2*k || maxSeq != 2*k {
		t.Errorf("truck-2 holds %d commands, last seq %d; want %d, %d", n, maxSeq, 2*k, 2*k)
	}
}

// TestDispatchQueryOneStatement: the read of the devices with work is one
// statement whatever their number (an array parameter on PostgreSQL, a
// JSON array on SQLite), not a statement per number of devices (an IN
// list: each prepared and planned on its own, and on PostgreSQL matched
// item by item, which took seconds once a poll had fallen behind:
// docs/performance.md); on SQLite it is one of the statements prepared on
// the read pool.
func TestDispatchQueryOneStatement(t *testing.T) {
	devs := func(n int) []string {
		var d []string
		for i := range n {
			d = append(d, fmt.Sprintf("dev-%d", i))
		}
		return d
	}
	for _, driver := range []string{DriverPostgres, DriverSQLite} {
		q3, a3, err3 := dispatchQuery(driver, "fe-1", devs(3))
		q700, a700, err700 := dispatchQuery(driver, "fe-1", devs(700))
		if err3 != nil || err700 != nil {
			t.Fatalf("%s: %v, %v", driver, err3, err700)
		}
		if q3 != q700 || len(a3) != 2 || len(a700) != 2 {
			t.Errorf("%s: 3 devices %q (%d args), 700 devices %q (%d args); want one statement, two args", driver, q3, len(a3), q700, len(a700))
		}
	}
	_, a, _ := dispatchQuery(DriverPostgres, "fe-1", devs(700))
	if got := a[1].([]string); len(got) != 700 {
		t.Errorf("PostgreSQL: the array holds %d devices, want 700", len(got))
	}
	q, a, _ := dispatchQuery(DriverSQLite, "fe-1", devs(2))
	if got := a[1].(string); got != `["dev-0","dev-1"]` {
		t.Errorf("SQLite: the devices are %s, want a JSON array of 2", got)
	}
	if !slices.Contains(readStatements, q) {
		t.Errorf("SQLite: %q is not prepared on the read pool", q)
	}
}
