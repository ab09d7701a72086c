package api

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// TestIdempotencyIndex: the idempotency index holds only commands posted
// with a key (migration 00021: a create without one writes no page of it),
// yet the replay of a key still finds its command through the index, not
// by reading the device's whole history, and a key stays unique per
// device.
func TestIdempotencyIndex(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := openTestStore(t, b)
		exec := func(q string, args ...any) error {
			_, err := db.wdb.ExecContext(ctx, q, args...)
			return err
		}
		if err := exec(`INSERT INTO devices (id, state, state_changed_at, state_changed_by, version, created_at, updated_at) VALUES ('truck-1', 'active', 0, 'test', 1, 0, 0)`); err != nil {
			t.Fatal(err)
		}
		insert := func(id string, seq int, key any) error {
			return exec(`INSERT INTO commands (id, device_id, seq, name, params, idempotency_key, state, created_at, created_by, key_id, expires_at, updated_at)
 VALUES ($1, 'truck-1', $2, 'locate', '{}', $3, 'queued', 0, 'test', '', 9000000000000, 0)`, id, seq, key)
		}
		for i, key := range []any{nil, "k-1", nil, "k-2"} {
			if err := insert("cmd_"+string(rune('a'+i)), i+1, key); err != nil {
				t.Fatalf("insert %d (key %v): %v", i, key, err)
			}
		}
		if err := insert("cmd_dup", 5, "k-1"); err == nil {
			t.Fatal("a second command of the device with key k-1 was stored: the key is no longer unique")
		}

		// The entries the index holds: only the keyed commands. SQLite
		// says whether an index is partial; PostgreSQL counts its entries.
		if db.driver == DriverPostgres {
			if err := exec(`VACUUM ANALYZE commands`); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.rdb.QueryRowContext(ctx, `SELECT reltuples::int FROM pg_class WHERE relname = 'commands_idempotency'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 2 {
				t.Errorf("idempotency index holds %d commands, want the 2 posted with a key", n)
			}
		} else {
			var partial int
			if err := db.rdb.QueryRowContext(ctx, `SELECT partial FROM pragma_index_list('commands') WHERE name = 'commands_idempotency'`).Scan(&partial); err != nil {
				t.Fatal(err)
			}
			if partial != 1 {
				t.Error("idempotency index holds every command, want only those posted with a key (a partial index)")
			}
		}

		c, err := scanCommand(db.rdb.QueryRowContext(ctx, commandByIdempotencyKey, "truck-1", "k-2"))
		if err != nil {
			t.Fatalf("replay of key k-2: %v", err)
		}
		if c.ID != "cmd_d" {
			t.Errorf("key k-2 found command %q, want cmd_d", c.ID)
		}
		if plan := queryPlan(t, db, commandByIdempotencyKey, "truck-1", "k-2"); !strings.Contains(plan, "commands_idempotency") {
			t.Errorf("the replay of a key does not read the idempotency index; plan:\n%s", plan)
		}
	})
}

// queryPlan returns the database's plan for q: SQLite's EXPLAIN QUERY
// PLAN; PostgreSQL's EXPLAIN with sequential scans priced out, so that an
// index it can use is chosen even on a table of four rows.
func queryPlan(t *testing.T, db *store, q string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	conn, err := db.rdb.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	explain := `EXPLAIN QUERY PLAN ` + q
	if db.driver == DriverPostgres {
		if _, err := conn.ExecContext(ctx, `SET enable_seqscan = off`); err != nil {
			t.Fatal(err)
		}
		defer conn.ExecContext(ctx, `RESET enable_seqscan`)
		explain = `EXPLAIN ` + q
	}
	rows, err := conn.QueryContext(ctx, explain, args...)
	if err != nil {
		t.Fatalf("%s: %v", explain, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var b strings.Builder
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		b.WriteString(vals[len(vals)-1].String + "\n")
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
