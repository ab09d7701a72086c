package api

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCommandRetention: finished commands older than -command-retention
// are deleted (and then 404); one finished more recently, one still open
// whatever its age, and the newest of each device (its seq goes on from
// it) are kept.
func TestCommandRetention(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// No sweep (Poll an hour): its own prune, at its first tick, could
		// take the old command before the test's does (seen on PostgreSQL
		// under -race: "prune: 0").
		c := startCmdEnv(t, b, func(cfg *Config) { cfg.Commands.Retention, cfg.Commands.Poll = 2*time.Hour, time.Hour })
		ctx := context.Background()
		cancel := func(dev, id string) {
			c.must(200, req{method: "POST", path: "/v1/devices/" + dev + "/commands/" + id + "/cancel", key: c.adminKey}, nil)
		}
		old := c.send("truck-1", map[string]any{"name": "old"})
		cancel("truck-1", old.ID)
		open := c.send("truck-1", map[string]any{"name": "open", "ttl": "100h"})
		recent := c.send("truck-2", map[string]any{"name": "recent"})
		cancel("truck-2", recent.ID)
		// The old one finished five hours ago, the open one was created then.
		if _, err := c.srv.db.wdb.ExecContext(ctx, `UPDATE commands SET completed_at = completed_at - $1, created_at = created_at - $1
 WHERE id IN ($2, $3)`, (5 * time.Hour).Milliseconds(), old.ID, open.ID); err != nil {
			t.Fatal(err)
		}
		if n, err := c.srv.pruneCommands(ctx, time.Now()); err != nil || n != 1 {
			t.Fatalf("prune: %d, %v; want the old command only", n, err)
		}
		c.must(404, req{method: "GET", path: "/v1/devices/truck-1/commands/" + old.ID, key: c.adminKey}, nil)
		if got := c.get("truck-1", open.ID); got.State != CmdQueued {
			t.Errorf("the open command: %+v", got)
		}
		if got := c.get("truck-2", recent.ID); got.State != CmdCancelled {
			t.Errorf("the recent command: %+v", got)
		}
		if next := c.send("truck-1", map[string]any{"name": "next"}); next.Seq != open.Seq+1 {
			t.Errorf("seq after pruning: %d, want %d", next.Seq, open.Seq+1)
		}
		// The newest command of a device stays, however old: the next
		// seq follows it.
		last := c.send("truck-2", map[string]any{"name": "last"})
		cancel("truck-2", last.ID)
		if _, err := c.srv.db.wdb.ExecContext(ctx, `UPDATE commands SET completed_at = completed_at - $1 WHERE device_id = $2`,
			(5 * time.Hour).Milliseconds(), "truck-2"); err != nil {
			t.Fatal(err)
		}
		if n, err := c.srv.pruneCommands(ctx, time.Now()); err != nil || n != 1 {
			t.Fatalf("prune: %d, %v; want truck-2's older command only", n, err)
		}
		if got := c.get("truck-2", last.ID); got.State != CmdCancelled {
			t.Errorf("truck-2's newest command: %+v", got)
		}
		if got := testutil.ToFloat64(c.srv.metrics.commands.WithLabelValues("pruned")); got != 2 {
			t.Errorf("pruned metric: %v, want 2", got)
		}
		// 0 keeps everything.
		c.srv.cfg.Commands.Retention = 0
		cancel("truck-1", open.ID)
		if n, err := c.srv.pruneCommands(ctx, time.Now().Add(1000*time.Hour)); err != nil || n != 0 {
			t.Errorf("prune with retention 0: %d, %v; want nothing", n, err)
		}
	})
}
