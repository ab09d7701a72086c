package api

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// streamEvents opens e's command events stream and returns its events
// ("overflow" as an event of that state) until it ends.
func streamEvents(t *testing.T, e *env, key, query string) <-chan CommandEvent {
	t.Helper()
	hreq, _ := http.NewRequest("GET", e.base+"/v1/commands/events?"+query, nil)
	hreq.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(res.Body)
	if res.StatusCode != 200 || !sc.Scan() || sc.Text() != ": command events" {
		res.Body.Close()
		t.Fatalf("events: %d %q", res.StatusCode, sc.Text())
	}
	out := make(chan CommandEvent, 100)
	go func() {
		defer res.Body.Close()
		defer close(out)
		for sc.Scan() {
			if sc.Text() == "event: overflow" {
				out <- CommandEvent{State: "overflow"}
			}
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev CommandEvent
				if json.Unmarshal([]byte(data), &ev) == nil && ev.ID != "" {
					out <- ev
				}
			}
		}
	}()
	return out
}

func takeEvents(t *testing.T, ch <-chan CommandEvent, n int) []CommandEvent {
	t.Helper()
	var got []CommandEvent
	timeout := time.After(15 * time.Second)
	for len(got) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				return got
			}
			got = append(got, ev)
		case <-timeout:
			return got
		}
	}
	return got
}

// TestCommandsAcrossReplicas: two replicas on one PostgreSQL, each polling
// the database only once a minute. A command created on B reaches a
// frontend long-polling A at once; its outcome, reported to A, answers a
// caller waiting on B; both replicas' streams carry every change in order.
// When a replica's listening connection is cut, its streams end with
// overflow, and once it listens again they carry the other's changes.
func TestCommandsAcrossReplicas(t *testing.T) {
	url := testenv.Postgres(t).NewDatabase(t)
	cfg := func() Config {
		c := DefaultConfig()
		c.Listen, c.DataDir, c.Driver, c.PostgresURL = "127.0.0.1:0", t.TempDir(), DriverPostgres, url
		c.Commands.Poll = time.Minute // only notifications are fast
		return c
	}
	a := runEnv(t, cfg())
	b := runEnv(t, cfg())
	b.adminKey = a.adminKey
	_, fkey := a.makeOperator("frontends", RoleFollower, "*")
	c := &cmdEnv{env: a, fkey: fkey}
	c.must(201, req{method: "POST", path: "/v1/devices", key: a.adminKey, body: map[string]any{"id": "truck-1"}}, nil)
	c.presence("fe-1", "truck-1", true, time.Now())
	c.dispatch("fe-1", "0s") // the first poll scans all; the next ones wait for work

	onA := streamEvents(t, a, a.adminKey, "device=truck-1&max_events=3&duration=20s")
	onB := streamEvents(t, b, a.adminKey, "device=truck-1&max_events=3&duration=20s")
	var (
		wg    sync.WaitGroup
		final Command
	)
	var status int
	wg.Go(func() {
		r := b.do(req{method: "POST", path: "/v1/devices/truck-1/commands?wait=15s", key: b.adminKey,
			body: map[string]any{"name": "unlock"}})
		status = r.status
		_ = json.Unmarshal(r.body, &final)
	})
	d := c.dispatch("fe-1", "15s") // on A
	if len(d) != 1 || d[0].Name != "unlock" {
		t.Fatalf("A's long poll answered %+v, want the command created on B", d)
	}
	c.report("fe-1", "truck-1", d[0].ID, "succeeded", "", `{"unlocked":true}`) // to A
	wg.Wait()
	if status != 201 || final.ID != d[0].ID || final.State != CmdSucceeded || final.Payload != `{"unlocked":true}` {
		t.Fatalf("the caller waiting on B got %d %+v", status, final)
	}
	for name, ch := range map[string]<-chan CommandEvent{"A": onA, "B": onB} {
		got := takeEvents(t, ch, 3)
		if len(got) != 3 || got[0].State != CmdQueued || got[1].State != CmdSent || got[2].State != CmdSucceeded || got[2].ID != final.ID {
			t.Errorf("replica %s's stream: %+v, want queued, sent, succeeded of %s", name, got, final.ID)
		}
	}
	if n := testutil.ToFloat64(a.srv.metrics.notifyEvents); n < 1 {
		t.Errorf("A counted %v events from B", n)
	}

	// Cut the replicas' listening connections: A's open stream ends with
	// overflow (it may have missed B's changes); once A listens again, a
	// new stream on A carries B's changes again.
	stale := streamEvents(t, a, a.adminKey, "device=truck-1&duration=20s")
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// The listening sessions' pids: a terminated backend stays in
	// pg_stat_activity for a moment after pg_terminate_backend, so
	// "listening again" means two listeners that are not the old ones.
	listeners := func() []int {
		rows, err := db.Query(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1`,
			`LISTEN `+commandChannel)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var pids []int
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		return pids
	}
	waitFor(t, 5*time.Second, "both replicas listening", func() bool { return len(listeners()) == 2 })
	old := listeners()
	if _, err := db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = $1
 AND pid <> pg_backend_pid()`, `LISTEN `+commandChannel); err != nil {
		t.Fatal(err)
	}
	if got := takeEvents(t, stale, 1); len(got) != 1 || got[0].State != "overflow" {
		t.Errorf("A's stream after A stopped listening: %+v, want overflow", got)
	}
	relistened := func(old []int) {
		t.Helper()
		waitFor(t, 10*time.Second, "both replicas listening again", func() bool {
			pids := listeners()
			return len(pids) == 2 && !slices.Contains(old, pids[0]) && !slices.Contains(old, pids[1]) &&
				a.srv.listening.Load() && b.srv.listening.Load()
		})
	}
	relistened(old)

	// A stream opened on A while A does not listen missed B's changes of
	// that time: once A listens again it ends with overflow. A listens
	// again within its backoff (200 ms), so the stream may open too late
	// to be deaf; then cut again.
	var deaf <-chan CommandEvent
	for try := 0; deaf == nil; try++ {
		if try == 5 {
			t.Fatal("no stream opened on A while it did not listen in 5 tries")
		}
		old = listeners()
		if _, err := db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = $1
 AND pid <> pg_backend_pid()`, `LISTEN `+commandChannel); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "A not listening", func() bool { return !a.srv.listening.Load() })
		ch := streamEvents(t, a, a.adminKey, "device=truck-1&duration=20s")
		a.srv.events.mu.Lock()
		for sub := range a.srv.events.subs {
			if sub.deaf {
				deaf = ch
			}
		}
		a.srv.events.mu.Unlock()
		relistened(old)
	}
	if got := takeEvents(t, deaf, 1); len(got) != 1 || got[0].State != "overflow" {
		t.Errorf("A's stream opened while A did not listen, once A listens again: %+v, want overflow", got)
	}
	fresh := streamEvents(t, a, a.adminKey, "device=truck-1&max_events=2&duration=20s")
	// fe-1 polled A lately: a create on A would hand the command to it, sent.
	a.srv.handoff.forget("fe-1")
	cmd := c.send("truck-1", map[string]any{"name": "locate"}) // on A, queued; B cancels it
	b.must(200, req{method: "POST", path: "/v1/devices/truck-1/commands/" + cmd.ID + "/cancel", key: b.adminKey}, nil)
	if got := takeEvents(t, fresh, 2); len(got) != 2 || got[0].ID != cmd.ID || got[0].State != CmdQueued ||
		got[1].ID != cmd.ID || got[1].State != CmdCancelled {
		t.Errorf("A's new stream: %+v, want A's queued then B's cancelled", got)
	}
	if n := testutil.ToFloat64(a.srv.metrics.notifyLost); n < 1 {
		t.Errorf("A's lost listens: %v, want >= 1", n)
	}
}
