package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCommandGroupsPostgres: on PostgreSQL several group transactions of
// command writes run at once, one per lane (db_group.go), without the
// feed_state lock, and the guarantees of docs/commands.md hold as they did
// with one: the seqs of one device's racing creates are distinct and in
// commit order, its queue limit is exact, an idempotency key posted
// several times at once creates one command, creates of many devices at
// once never deadlock, and groups that deadlock each other anyway are run
// again, not failed. A second connection holds the rows the api's writes
// need, so that the races are not left to the scheduler: the device's
// lane has its group in flight, waiting, before the race starts.
func TestCommandGroupsPostgres(t *testing.T) {
	c := startCmdEnv(t, backends[1], func(cfg *Config) { cfg.Commands.QueueLimit = 8 })
	db := c.srv.db
	if len(db.lanes) < 3 {
		t.Fatalf("%d lanes of group transactions on PostgreSQL, want several", len(db.lanes))
	}
	ctx := context.Background()
	other, err := sql.Open(postgresDriver, c.cfg.PostgresURL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// hold begins a transaction on the other connection that runs stmts
	// (and keeps their locks until it ends).
	hold := func(stmts ...string) *sql.Tx {
		t.Helper()
		h, err := other.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range stmts {
			if _, err := h.ExecContext(ctx, q); err != nil {
				h.Rollback()
				t.Fatalf("%s: %v", q, err)
			}
		}
		return h
	}
	// laneBusy: dev's lane has its group in flight and queued writes
	// queued behind it.
	laneBusy := func(dev string, queued int) func() bool {
		return func() bool {
			g := db.lane(dev)
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.busy && len(g.queue) == queued
		}
	}
	// post sends n creates to dev at once; wait returns their answers
	// once all came.
	post := func(dev string, n int, header map[string]string) (wait func() []resp) {
		out := make([]resp, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				out[i] = c.do(req{method: "POST", path: "/v1/devices/" + dev + "/commands", key: c.adminKey,
					body: map[string]any{"name": "unlock", "ttl": "1m"}, header: header})
			})
		}
		t.Cleanup(wg.Wait)
		return func() []resp { wg.Wait(); return out }
	}
	t.Run("creates of one device race", func(t *testing.T) {
		var mu sync.Mutex
		var sizes []int
		db.groupSize = func(n int) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() }
		defer func() { db.groupSize = nil }()
		// The other connection holds truck-1 and has written its seq 1,
		// not committed: a create that read the device's commands before
		// it commits would take seq 1 again, and count one waiting too few.
		h := hold(`SELECT 1 FROM devices WHERE id = 'truck-1' FOR NO KEY UPDATE`,
			`INSERT INTO commands (id, device_id, seq, name, params, state, created_at, created_by, key_id, request_id, expires_at, updated_at)
 VALUES ('cmd_held', 'truck-1', 1, 'held', '{}', 'queued', 0, 'test', '', '', 9000000000000, 0)`)
		const n = 12
		refused := testutil.ToFloat64(c.srv.metrics.commands.WithLabelValues("refused_queue_full"))
		answers := post("truck-1", n, nil)
		// truck-1's lane has one create in flight, waiting for the device;
		// the rest queue behind it.
		waitFor(t, 20*time.Second, "the lane busy and the rest queued", laneBusy("truck-1", n-1))
		if err := h.Commit(); err != nil {
			t.Fatal(err)
		}
		rs := answers()
		created, full := 0, 0
		var seqs []int64
		for _, r := range rs {
			switch r.status {
			case http.StatusCreated:
				created++
				var cmd Command
				r.json(t, &cmd)
				seqs = append(seqs, cmd.Seq)
			case http.StatusTooManyRequests:
				full++
			default:
				t.Errorf("create: %d %s", r.status, r.body)
			}
		}
		// The limit is 8 waiting; the held one is the first.
		if created != 7 || full != n-7 {
			t.Errorf("%d created, %d refused queue_full; want 7 and %d", created, full, n-7)
		}
		// Counted once each, though their group ran twice (without
		// savepoints, then with them).
		if got := testutil.ToFloat64(c.srv.metrics.commands.WithLabelValues("refused_queue_full")) - refused; got != float64(full) {
			t.Errorf("refused_queue_full grew by %v, want %d", got, full)
		}
		slices.Sort(seqs)
		if want := []int64{2, 3, 4, 5, 6, 7, 8}; !slices.Equal(seqs, want) {
			t.Errorf("seqs %v, want %v: one each, after the held one", seqs, want)
		}
		// The first write was a group of one; the queued ones shared one
		// group, in which the writes refused (429) were rolled back alone
		// and the others committed.
		mu.Lock()
		got := slices.Clone(sizes)
		mu.Unlock()
		slices.Sort(got)
		if want := []int{1, n - 1}; !slices.Equal(got, want) {
			t.Errorf("groups of %v, want %v", got, want)
		}
	})

	t.Run("one idempotency key posted at once", func(t *testing.T) {
		h := hold(`SELECT 1 FROM devices WHERE id = 'truck-2' FOR NO KEY UPDATE`)
		const n = 6
		answers := post("truck-2", n, map[string]string{"Idempotency-Key": "door-42"})
		waitFor(t, 20*time.Second, "the lane busy and the rest queued", laneBusy("truck-2", n-1))
		if err := h.Commit(); err != nil {
			t.Fatal(err)
		}
		rs := answers()
		ids := map[string]int{}
		created := 0
		for _, r := range rs {
			if r.status != http.StatusCreated && r.status != http.StatusOK {
				t.Fatalf("create: %d %s", r.status, r.body)
			}
			if r.status == http.StatusCreated {
				created++
			}
			var cmd Command
			r.json(t, &cmd)
			ids[cmd.ID]++
		}
		if created != 1 || len(ids) != 1 {
			t.Errorf("%d answered 201, ids %v: want one command, created once, answered to all", created, ids)
		}
		var rows int
		if err := db.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM commands WHERE device_id = 'truck-2'`).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows != 1 {
			t.Errorf("%d commands of truck-2 stored, want 1", rows)
		}
	})

	t.Run("a refused create writes nothing", func(t *testing.T) {
		// On PostgreSQL a create is one conditional statement after the
		// device's lock (commands_create_pg.go): each refusal is told
		// apart from what it read, and inserts no row.
		c.makeFleet("f-a")
		c.makeFleet("f-b")
		for id, fleet := range map[string]string{"pa1": "f-a", "pb1": "f-b", "pd1": "f-a"} {
			c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": id, "fleet": fleet}}, nil)
		}
		c.must(200, req{method: "POST", path: "/v1/devices/pd1/state", key: c.adminKey, body: map[string]string{"state": "decommissioned"}}, nil)
		_, opA := c.makeOperator("op-a", RoleOperator, "f-a")
		create := func(key, dev string, body map[string]any, header map[string]string) resp {
			return c.do(req{method: "POST", path: "/v1/devices/" + dev + "/commands", key: key, body: body, header: header})
		}
		unlock := map[string]any{"name": "unlock", "params": map[string]string{"door": "rear"}}
		idem := map[string]string{"Idempotency-Key": "pg-42"}
		var first, again Command
		if r := create(opA, "pa1", unlock, idem); r.status != http.StatusCreated {
			t.Fatalf("create in the caller's fleet: %d %s", r.status, r.body)
		} else {
			r.json(t, &first)
		}
		for _, tc := range []struct {
			what, key, dev string
			body           map[string]any
			header         map[string]string
			want           int
		}{
			{"unknown device", c.adminKey, "nobody", unlock, nil, http.StatusNotFound},
			{"another fleet's device", opA, "pb1", unlock, nil, http.StatusNotFound},
			{"decommissioned device", c.adminKey, "pd1", unlock, nil, http.StatusUnprocessableEntity},
			{"key reused for another command", opA, "pa1", map[string]any{"name": "lock"}, idem, http.StatusConflict},
			{"key reused, other params", opA, "pa1", map[string]any{"name": "unlock", "params": map[string]string{"door": "front"}}, idem, http.StatusConflict},
		} {
			if r := create(tc.key, tc.dev, tc.body, tc.header); r.status != tc.want {
				t.Errorf("%s: %d %s, want %d", tc.what, r.status, r.body, tc.want)
			}
		}
		if r := create(opA, "pa1", unlock, idem); r.status != http.StatusOK {
			t.Errorf("the same create again under its key: %d %s, want 200", r.status, r.body)
		} else if r.json(t, &again); again.ID != first.ID || again.Seq != first.Seq {
			t.Errorf("the retry answered %s (seq %d), want the first, %s (seq %d)", again.ID, again.Seq, first.ID, first.Seq)
		}
		rows := map[string]int{}
		rs, err := db.rdb.QueryContext(ctx, `SELECT device_id, COUNT(*) FROM commands WHERE device_id IN ('pa1', 'pb1', 'pd1') GROUP BY device_id`)
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var dev string
			var n int
			if err := rs.Scan(&dev, &n); err != nil {
				t.Fatal(err)
			}
			rows[dev] = n
		}
		rs.Close()
		if want := map[string]int{"pa1": 1}; !maps.Equal(rows, want) {
			t.Errorf("commands stored %v, want %v", rows, want)
		}
	})

	t.Run("a report post's reports in one batch", func(t *testing.T) {
		// On PostgreSQL the reports of one post are sent as one batch
		// (commands_reports.go): each still applies in order, after the
		// ones before it, or is ignored alone.
		c.makeFleet("f-r")
		c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": "pr1", "fleet": "f-r"}}, nil)
		c.presence("fe-r", "pr1", true, time.Now())
		x := c.send("pr1", map[string]any{"name": "x", "ttl": "1m"})
		y := c.send("pr1", map[string]any{"name": "y", "ttl": "1m"})
		post := func(reps ...[2]string) map[string]int {
			var body []map[string]any
			for _, r := range reps {
				body = append(body, map[string]any{"id": r[0], "device_id": "pr1", "outcome": r[1], "at": time.Now().UnixMilli()})
			}
			var out map[string]int
			c.must(200, req{method: "POST", path: "/v1/frontends/fe-r/command-reports", key: c.fkey,
				body: map[string]any{"reports": body}}, &out)
			return out
		}
		if d := c.dispatch("fe-r", "0s"); len(d) != 2 || d[0].ID != x.ID || d[1].ID != y.ID {
			t.Fatalf("dispatch %+v, want %s then %s", d, x.ID, y.ID)
		}
		// x's two reports in order, one for no command, y's result and
		// then a step back, which is ignored: the result stands.
		got := post([2]string{x.ID, "received"}, [2]string{"cmd_nobody", "succeeded"}, [2]string{x.ID, "succeeded"},
			[2]string{y.ID, "failed"}, [2]string{y.ID, "received"})
		if want := map[string]int{"applied": 3, "ignored": 2}; !maps.Equal(got, want) {
			t.Errorf("reports applied and ignored: %v, want %v", got, want)
		}
		if cmd := c.get("pr1", x.ID); cmd.State != CmdSucceeded || cmd.DeliveredAt == nil {
			t.Errorf("x after its reports: %s, delivered %v; want succeeded, delivered", cmd.State, cmd.DeliveredAt)
		}
		if cmd := c.get("pr1", y.ID); cmd.State != CmdFailed {
			t.Errorf("y: %s, want failed", cmd.State)
		}
	})

	t.Run("a dispatch's marks in one batch stop at a changed command", func(t *testing.T) {
		// On PostgreSQL a dispatch's marks go as one batch
		// (markSentBatch); a device's later commands are marked only if
		// the one before was. The other connection holds x's row while
		// the dispatch has read x, y, z as queued, then cancels x: x's
		// mark changes no row, and y and z must not go out before it.
		c.makeFleet("f-s")
		c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": "ps1", "fleet": "f-s"}}, nil)
		c.presence("fe-s", "ps1", true, time.Now())
		x := c.send("ps1", map[string]any{"name": "x", "ttl": "1m"})
		y := c.send("ps1", map[string]any{"name": "y", "ttl": "1m"})
		z := c.send("ps1", map[string]any{"name": "z", "ttl": "1m"})
		h := hold(`SELECT 1 FROM commands WHERE id = '` + x.ID + `' FOR UPDATE`)
		answer := make(chan resp, 1)
		go func() { answer <- c.do(req{method: "GET", path: "/v1/frontends/fe-s/commands?wait=0s", key: c.fkey}) }()
		waitFor(t, 20*time.Second, "the dispatch's mark waiting for x's row", func() bool {
			var n int
			err := db.rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE commands SET state%'`).Scan(&n)
			return err == nil && n > 0
		})
		if _, err := h.ExecContext(ctx, `UPDATE commands SET state = 'cancelled', completed_at = 1 WHERE id = '`+x.ID+`'`); err != nil {
			h.Rollback()
			t.Fatal(err)
		}
		if err := h.Commit(); err != nil {
			t.Fatal(err)
		}
		var d Dispatch
		if r := <-answer; r.status != http.StatusOK {
			t.Fatalf("dispatch: %d %s", r.status, r.body)
		} else {
			r.json(t, &d)
		}
		if len(d.Commands) != 0 {
			t.Errorf("dispatched %+v while x changed under it, want none (y and z wait for their turn)", d.Commands)
		}
		for _, id := range []string{y.ID, z.ID} {
			if cmd := c.get("ps1", id); cmd.State != CmdQueued || cmd.Attempts != 0 {
				t.Errorf("%s after the stopped dispatch: %s, %d attempts; want queued, none", id, cmd.State, cmd.Attempts)
			}
		}
		// Taken at the next full scan (the api's -command-poll).
		if got := c.dispatch("fe-s", "5s"); len(got) != 2 || got[0].ID != y.ID || got[1].ID != z.ID {
			t.Errorf("next dispatch %+v, want y then z", got)
		}
	})

	t.Run("command writes do not wait for feed_state", func(t *testing.T) {
		// A registry write in progress elsewhere holds feed_state: a
		// command's create, dispatch and report go on beside it.
		c.presence("fe-1", "truck-2", true, time.Now())
		h := hold(`SELECT version FROM feed_state WHERE id = 1 FOR UPDATE`)
		defer h.Rollback()
		var rs [3]resp
		fin := make(chan struct{})
		go func() {
			defer close(fin)
			rs[0] = c.do(req{method: "POST", path: "/v1/devices/truck-2/commands", key: c.adminKey,
				body: map[string]any{"name": "locate", "ttl": "1m"}})
			rs[1] = c.do(req{method: "GET", path: "/v1/frontends/fe-1/commands?wait=0s", key: c.fkey})
			var d Dispatch
			if rs[1].status == http.StatusOK && json.Unmarshal(rs[1].body, &d) == nil && len(d.Commands) > 0 {
				rs[2] = c.do(req{method: "POST", path: "/v1/frontends/fe-1/command-reports", key: c.fkey,
					body: map[string]any{"reports": []map[string]any{{"id": d.Commands[0].ID, "device_id": "truck-2",
						"outcome": "succeeded", "at": time.Now().UnixMilli()}}}})
			}
		}()
		select {
		case <-fin:
		case <-time.After(20 * time.Second):
			h.Rollback()
			<-fin
			t.Fatal("a command write waited for the feed_state lock")
		}
		for i, want := range []int{http.StatusCreated, http.StatusOK, http.StatusOK} {
			if rs[i].status != want {
				t.Errorf("step %d (create, dispatch, report): %d %s, want %d", i, rs[i].status, rs[i].body, want)
			}
		}
	})

	t.Run("a device's lane holds back only its creates", func(t *testing.T) {
		// Creates go to their device's lane: truck-1 and truck-2 hash to
		// different ones, so with truck-1 held and its create in flight,
		// truck-2's create commits beside it; no group ever holds both,
		// which is what keeps groups from locking devices in opposite
		// orders (before lanes: deadlocks, 3,326 answers 500 of 15,000 in
		// the 500 commands/s bench).
		if db.lane("truck-1") == db.lane("truck-2") {
			t.Fatal("truck-1 and truck-2 share a lane: pick devices of two")
		}
		before := testutil.ToFloat64(c.srv.metrics.groupRetries)
		h := hold(`SELECT 1 FROM devices WHERE id = 'truck-1' FOR NO KEY UPDATE`)
		held := post("truck-1", 1, nil)
		waitFor(t, 20*time.Second, "truck-1's lane busy", laneBusy("truck-1", 0))
		other := post("truck-2", 1, nil)()
		if other[0].status != http.StatusCreated && other[0].status != http.StatusTooManyRequests {
			t.Errorf("truck-2's create beside truck-1's held one: %d %s", other[0].status, other[0].body)
		}
		if err := h.Commit(); err != nil {
			t.Fatal(err)
		}
		if r := held()[0]; r.status != http.StatusCreated && r.status != http.StatusTooManyRequests {
			t.Errorf("truck-1's create: %d %s", r.status, r.body)
		}
		if got := testutil.ToFloat64(c.srv.metrics.groupRetries) - before; got != 0 {
			t.Errorf("%v groups ran again", got)
		}
	})

	t.Run("deadlocked groups run again", func(t *testing.T) {
		before := testutil.ToFloat64(c.srv.metrics.groupRetries)
		// Two groups lock truck-1 and truck-2 in opposite orders, each
		// taking its second only once both hold their first: PostgreSQL
		// aborts one (after deadlock_timeout), whose group runs again.
		var firsts sync.WaitGroup
		firsts.Add(2)
		both := make(chan struct{})
		go func() { firsts.Wait(); close(both) }()
		cross := func(a, b string) func(*tx) error {
			var once sync.Once
			return func(t *tx) error {
				if err := t.lockDeviceCommands(a); err != nil {
					return err
				}
				once.Do(func() {
					firsts.Done()
					select {
					case <-both:
					case <-time.After(10 * time.Second): // the groups did not run at once: no deadlock to see
					}
				})
				return t.lockDeviceCommands(b)
			}
		}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		// Two lanes (what a campaign's offers, locking several devices
		// outside the lanes, can meet): keys that hash apart.
		k1, k2 := "lane-a0", ""
		for i := 1; k2 == ""; i++ {
			if k := fmt.Sprintf("lane-a%d", i); db.lane(k) != db.lane(k1) {
				k2 = k
			}
		}
		wg.Go(func() { errs[0] = db.writeGroup(ctx, k1, cross("truck-1", "truck-2")) })
		wg.Go(func() { errs[1] = db.writeGroup(ctx, k2, cross("truck-2", "truck-1")) })
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("group %d: %v, want both committed (the deadlock's victim run again)", i, err)
			}
		}
		if got := testutil.ToFloat64(c.srv.metrics.groupRetries) - before; got < 1 {
			t.Errorf("drover_api_write_group_retries_total grew by %v, want the victim's run again counted", got)
		}
	})
}
