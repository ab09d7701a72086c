package api

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"modernc.org/sqlite"
)

// Statements per command on SQLite, counted by a database/sql driver that
// wraps modernc.org/sqlite: executions (every statement run) and parses
// (every statement SQLite had to prepare: a plain Exec or Query prepares
// and throws away; a prepared statement is parsed once). Deterministic
// figures, unlike the time per command, which depends on the machine.
//
//	go test -run '^$' -bench BenchmarkCommandStatements -benchtime 200x ./api/

// On PostgreSQL the store counts itself, with a pgx tracer (db_postgres.go):
// statements (BEGIN and COMMIT included) and round trips to the server (a
// statement sent alone, or a batch of them sent together; pgx's
// once-per-connection prepares not included).
//
//	go test -run '^$' -bench BenchmarkCommandRoundTripsPostgres -benchtime 200x ./api/

// stmtCounts counts what the counting driver ran.
var stmtCounts struct{ execs, parses, txs atomic.Int64 }

var registerCounting sync.Once

// countingSQLite registers the counting driver (once) and returns its name.
func countingSQLite() string {
	registerCounting.Do(func() { sql.Register("sqlite-counting", countingDriver{&sqlite.Driver{}}) })
	return "sqlite-counting"
}

type countingDriver struct{ d driver.Driver }

func (c countingDriver) Open(name string) (driver.Conn, error) {
	cn, err := c.d.Open(name)
	if err != nil {
		return nil, err
	}
	return &countingConn{cn}, nil
}

// countingConn passes everything to modernc's connection, counting.
type countingConn struct{ driver.Conn }

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	stmtCounts.txs.Add(1)
	t, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return countingTx{t}, nil
}

// CheckNamedValue lets pgx take the arguments it knows (arrays).
func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	if ck, ok := c.Conn.(driver.NamedValueChecker); ok {
		return ck.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// countingTx counts the end of a transaction (COMMIT or ROLLBACK).
type countingTx struct{ driver.Tx }

func (t countingTx) Commit() error   { stmtCounts.txs.Add(1); return t.Tx.Commit() }
func (t countingTx) Rollback() error { stmtCounts.txs.Add(1); return t.Tx.Rollback() }

func (c *countingConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	stmtCounts.parses.Add(1)
	st, err := c.Conn.(driver.ConnPrepareContext).PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	return &countingStmt{st}, nil
}

func (c *countingConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	stmtCounts.parses.Add(1)
	stmtCounts.execs.Add(1)
	return c.Conn.(driver.ExecerContext).ExecContext(ctx, q, args)
}

func (c *countingConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	stmtCounts.parses.Add(1)
	stmtCounts.execs.Add(1)
	return c.Conn.(driver.QueryerContext).QueryContext(ctx, q, args)
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

type countingStmt struct{ driver.Stmt }

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	stmtCounts.execs.Add(1)
	return s.Stmt.(driver.StmtExecContext).ExecContext(ctx, args)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	stmtCounts.execs.Add(1)
	return s.Stmt.(driver.StmtQueryContext).QueryContext(ctx, args)
}

// BenchmarkCommandStatements: one command's whole way through the api, as
// a frontend plays it over HTTP — the operator's POST, the frontend's long
// poll answered with it (handed to the poll by the create, which marked
// it sent: the poll runs no statement, since the last report found
// nothing queued behind its command), the device's result reported, the operator's read of the outcome (the read a ?wait makes at
// each of its wakes) — and the statements each step ran on SQLite
// (authentication included; the api's background polls set to an hour,
// so that nothing else runs). Reports stmts/create, stmts/dispatch,
// stmts/report, stmts/get, their parses, and the allocations of the whole
// (client included).
func BenchmarkCommandStatements(b *testing.B) {
	old := sqliteDriver
	sqliteDriver = countingSQLite()
	defer func() { sqliteDriver = old }()
	counts := func(*store) [2]int64 { return [2]int64{stmtCounts.execs.Load(), stmtCounts.parses.Load()} }
	benchCommandCycle(b, backends[0], counts, func(step int, d [2]int64, n float64) {
		name := []string{"create", "dispatch", "report", "get"}[step]
		b.ReportMetric(float64(d[0])/n, "stmts/"+name)
		b.ReportMetric(float64(d[1])/n, "parses/"+name)
	})
}

// BenchmarkCommandRoundTripsPostgres: the same cycle on a real PostgreSQL,
// reporting each step's statements (BEGIN and COMMIT included) and round
// trips to the server, authentication included, as the store's own
// counter (drover_api_db_round_trips_total) has them; each step's writes
// are a group of one here (the benchmark runs one command at a time).
func BenchmarkCommandRoundTripsPostgres(b *testing.B) {
	counts := func(s *store) [2]int64 { return [2]int64{s.pgCount.statements.Load(), s.pgCount.roundTrips.Load()} }
	benchCommandCycle(b, backends[1], counts, func(step int, d [2]int64, n float64) {
		name := []string{"create", "dispatch", "report", "get"}[step]
		b.ReportMetric(float64(d[0])/n, "stmts/"+name)
		b.ReportMetric(float64(d[1])/n, "roundtrips/"+name)
	})
}

// benchCommandCycle runs the cycle b.N times on backend be and hands
// report each step's growth of the two counts counts reads.
func benchCommandCycle(b *testing.B, be backend, counts func(*store) [2]int64, report func(step int, d [2]int64, n float64)) {
	c := startCmdEnv(b, be, func(cfg *Config) {
		cfg.Commands.Poll, cfg.FeedPoll = time.Hour, time.Hour
	})
	c.presence("fe-1", "truck-1", true, time.Now())
	c.dispatch("fe-1", "0s") // the first poll scans everything; later ones take the work they are woken for
	var step [4][2]int64
	measure := func(i int, f func()) {
		before := counts(c.srv.db)
		f()
		after := counts(c.srv.db)
		for k := range after {
			step[i][k] += after[k] - before[k]
		}
	}
	one := func() {
		var cmd Command
		measure(0, func() { cmd = c.send("truck-1", map[string]any{"name": "locate", "ttl": "1m"}) })
		measure(1, func() {
			if d := c.dispatch("fe-1", "5s"); len(d) != 1 || d[0].ID != cmd.ID {
				b.Fatalf("dispatch %+v, want %s", d, cmd.ID)
			}
		})
		measure(2, func() { c.report("fe-1", "truck-1", cmd.ID, "succeeded") })
		measure(3, func() {
			if got := c.get("truck-1", cmd.ID); got.State != CmdSucceeded {
				b.Fatalf("command %s is %s, want %s", cmd.ID, got.State, CmdSucceeded)
			}
		})
	}
	for range 3 { // warm: prepared statements, key caches
		one()
	}
	step = [4][2]int64{}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		one()
	}
	b.StopTimer()
	for i, d := range step {
		report(i, d, float64(b.N))
	}
}
