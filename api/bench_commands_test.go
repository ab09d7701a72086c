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

// stmtCounts counts what the counting driver ran.
var stmtCounts struct{ execs, parses atomic.Int64 }

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
	return c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
}

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
// poll answered with it (the dispatch's mark), the device's result
// reported — and the statements each step ran on SQLite (authentication
// included; the api's background polls set to an hour, so that nothing
// else runs). Reports stmts/create, stmts/dispatch, stmts/report, their
// parses, and the allocations of the whole (client included).
func BenchmarkCommandStatements(b *testing.B) {
	old := sqliteDriver
	sqliteDriver = countingSQLite()
	defer func() { sqliteDriver = old }()
	c := startCmdEnv(b, backends[0], func(cfg *Config) {
		cfg.Commands.Poll, cfg.FeedPoll = time.Hour, time.Hour
	})
	c.presence("fe-1", "truck-1", true, time.Now())
	c.dispatch("fe-1", "0s") // the first poll scans everything; later ones take the work they are woken for
	var step [3]struct{ execs, parses int64 }
	measure := func(i int, f func()) {
		e, p := stmtCounts.execs.Load(), stmtCounts.parses.Load()
		f()
		step[i].execs += stmtCounts.execs.Load() - e
		step[i].parses += stmtCounts.parses.Load() - p
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
	}
	for range 3 { // warm: prepared statements, key caches
		one()
	}
	step = [3]struct{ execs, parses int64 }{}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		one()
	}
	b.StopTimer()
	n := float64(b.N)
	for i, name := range []string{"create", "dispatch", "report"} {
		b.ReportMetric(float64(step[i].execs)/n, "stmts/"+name)
		b.ReportMetric(float64(step[i].parses)/n, "parses/"+name)
	}
}
