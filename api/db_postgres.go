package api

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// pgCounter counts what the api sends PostgreSQL, as a pgx tracer on
// every connection of the store: round trips (each query, BEGIN and
// COMMIT included, and each pgx batch, which sends its statements
// together) and statements (a batch's each). Exported as
// drover_api_db_round_trips_total and drover_api_db_statements_total;
// scripts/bench-commands.sh divides them by the commands posted, and
// BenchmarkCommandRoundTripsPostgres reads them. Not counted: the prepare
// pgx sends once per connection for a statement it has not seen (its
// statement cache), and the ping of a connection taken from the pool
// after a second idle. Two atomic adds per query: cheap beside the query.
// It also counts the COMMITs PostgreSQL answered COMMIT (commits,
// drover_api_db_commits_total: pg_stat_statements does not see a COMMIT
// sent in a batch, through the extended protocol) and the API key reads
// of authentications (keyReads), which the key cache's tests read: a
// comparison of lengths for nearly every statement.
type pgCounter struct{ roundTrips, statements, commits, keyReads atomic.Int64 }

// TraceQueryStart counts a query: one statement, one round trip.
func (c *pgCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.roundTrips.Add(1)
	c.statements.Add(1)
	if d.SQL == keyLookup {
		c.keyReads.Add(1)
	}
	return ctx
}

// TraceQueryEnd is the QueryTracer's other half: nothing to count.
func (c *pgCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart counts a batch: one round trip.
func (c *pgCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.roundTrips.Add(1)
	return ctx
}

// TraceBatchQuery counts a statement of a batch, and a commit.
func (c *pgCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.statements.Add(1)
	if d.Err == nil && d.SQL == `COMMIT` && d.CommandTag.String() == "COMMIT" {
		c.commits.Add(1)
	}
}

// TraceBatchEnd is the BatchTracer's last call: nothing to count.
func (c *pgCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// openPostgres opens the pool of url with the counter as every
// connection's tracer. pgx's defaults otherwise, as sql.Open("pgx", url)
// had them: its statement cache (each statement prepared once per
// connection, then sent as Bind/Execute only), 512 statements a
// connection.
func openPostgres(url string, count *pgCounter) (*sql.DB, error) {
	if postgresDriver != "pgx" { // a test's own driver (bench_commands_test.go)
		return sql.Open(postgresDriver, url)
	}
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	cc.Tracer = count
	return stdlib.OpenDB(*cc), nil
}

// A write transaction on PostgreSQL (docs/performance.md, "Commands round
// trip"): database/sql's BeginTx and Commit are a round trip each, BEGIN
// alone and COMMIT alone. tx runs the transaction by hand on its
// connection instead: BEGIN is queued first in the transaction's first
// pgx batch (pgx's Batch.BeginTx: a create's device lock and read, a
// dispatch's marks, a report post's updates, a registry write's version
// lock), or sent alone before a first statement that is not a batch; the
// version write-back and pg_notify go in one batch with COMMIT, once
// every statement's result is known. A create alone is then two round
// trips, where it was four (BEGIN, batch, pg_notify, COMMIT).
//
// What stays as it was: PostgreSQL runs the statements of a batch one
// after the other, each seeing what the one before wrote; a statement
// that fails aborts the transaction and skips the rest of its batch, and
// the transaction is rolled back (rollbackPG); a COMMIT that PostgreSQL
// answers ROLLBACK (the transaction had failed) is an error; the
// notifications are delivered at commit only if it commits. A connection
// left inside a transaction (a rollback that failed) is never reused:
// pgx's database/sql driver drops a connection that is not idle when it
// goes back to the pool (ResetSession).

// batch sends b's statements to PostgreSQL in one round trip, in t's
// transaction (beginning it, when this is its first round trip), and
// hands read their results, in b's order (read must take every one it
// wants before it returns). PostgreSQL still runs them one after the
// other, each with a snapshot of its own (READ COMMITTED): a statement
// after a row lock sees what the lock waited for. Only on PostgreSQL
// (t.conn is nil on SQLite).
func (t *tx) batch(b *pgx.Batch, read func(pgx.BatchResults) error) error {
	if t.conn == nil {
		return fmt.Errorf("batch: not on PostgreSQL")
	}
	begin := !t.begun
	if begin {
		nb := &pgx.Batch{}
		nb.BeginTx(pgx.TxOptions{})
		nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
		b, t.begun = nb, true
	}
	return t.conn.Raw(func(dc any) error {
		c, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok {
			return fmt.Errorf("batch: driver connection %T is not pgx's", dc)
		}
		br := c.Conn().SendBatch(t.ctx, b)
		var err error
		if begin {
			if _, err = br.Exec(); err != nil {
				err = fmt.Errorf("begin: %w", err)
			}
		}
		if err == nil {
			err = read(br)
		}
		if cerr := br.Close(); err == nil && cerr != nil {
			err = cerr
		}
		return err
	})
}

// begin sends BEGIN alone, unless t has begun (PostgreSQL).
func (t *tx) begin(ctx context.Context) error {
	if !t.begun {
		t.begun = true
		if _, err := t.conn.ExecContext(ctx, `BEGIN`); err != nil {
			t.beginErr = err
		}
	}
	return t.beginErr
}

// ExecContext runs a statement in t.
func (t *tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if t.Tx != nil {
		return t.Tx.ExecContext(ctx, query, args...)
	}
	if err := t.begin(ctx); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return t.conn.ExecContext(ctx, query, args...)
}

// QueryContext runs a query in t.
func (t *tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if t.Tx != nil {
		return t.Tx.QueryContext(ctx, query, args...)
	}
	if err := t.begin(ctx); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return t.conn.QueryContext(ctx, query, args...)
}

// QueryRowContext runs a query of one row in t. Should BEGIN have
// failed, the row is an error (of a cancelled context: a *sql.Row holds
// no error of ours) and writeTx answers BEGIN's.
func (t *tx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if t.Tx != nil {
		return t.Tx.QueryRowContext(ctx, query, args...)
	}
	if err := t.begin(ctx); err != nil {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		return t.conn.QueryRowContext(cctx, query, args...)
	}
	return t.conn.QueryRowContext(ctx, query, args...)
}

// PrepareContext prepares a statement on t's connection.
func (t *tx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if t.Tx != nil {
		return t.Tx.PrepareContext(ctx, query)
	}
	if err := t.begin(ctx); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return t.conn.PrepareContext(ctx, query)
}

// commitPG writes the version taken back, notifies and commits, in one
// round trip (with BEGIN when nothing was sent before: a transaction
// that only notifies). A transaction that sent nothing and has nothing
// to write commits nothing.
func (t *tx) commitPG() error {
	payloads, err := t.notePayloads()
	if err != nil {
		return err
	}
	setV := t.version != t.base
	if !t.begun && !setV && len(payloads) == 0 {
		t.done = true
		return nil
	}
	b := &pgx.Batch{}
	if setV {
		b.Queue(setVersion, t.version)
	}
	queueNotify(b, payloads)
	b.Queue(`COMMIT`)
	err = t.batch(b, func(br pgx.BatchResults) error {
		if setV {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("write feed version: %w", err)
			}
		}
		if len(payloads) > 0 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("notify command events: %w", err)
			}
		}
		tag, err := br.Exec()
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if tag.String() != "COMMIT" {
			return fmt.Errorf("commit: the transaction was rolled back (%s)", tag)
		}
		return nil
	})
	if err != nil {
		return err
	}
	t.done = true
	return nil
}

// rollbackPG rolls t back unless it committed, or sent nothing.
// PostgreSQL ends an aborted transaction only with ROLLBACK; one that
// fails leaves the connection not idle, which the pool then drops.
func (t *tx) rollbackPG() {
	if t.done || !t.begun {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), 5*time.Second)
	defer cancel()
	_ = t.conn.Raw(func(dc any) error {
		c, ok := dc.(interface{ Conn() *pgx.Conn })
		if !ok || c.Conn().IsClosed() || c.Conn().PgConn().TxStatus() == 'I' {
			return nil
		}
		_, err := c.Conn().Exec(ctx, `ROLLBACK`)
		return err
	})
}
