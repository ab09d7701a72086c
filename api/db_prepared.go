package api

import (
	"context"
	"database/sql"
	"fmt"
)

// Prepared statements for the command path on SQLite.
// modernc.org/sqlite parses and plans every statement it is given and
// throws the plan away after one use: at 500 commands/s, parsing SQL was a
// sixth of the api's CPU (docs/performance.md, "Commands round trip"). The
// statements of the command writes — always the same text — are prepared
// once, when the store opens, on the write connection (SQLite's write pool
// holds one), and reused by every transaction: database/sql's
// Tx.StmtContext reuses a statement already prepared on the transaction's
// connection (and prepares it again on a new connection, should the pool
// replace it). They cannot be prepared lazily: inside a transaction the
// pool's one connection is taken. PostgreSQL needs none of this: pgx
// caches the statements it prepares, per connection.
//
// The hot reads of the command path (readStatements: a wait's read of its
// command, a frontend's dispatch) are prepared on the read pool too, as
// database/sql's *DB-level statements: each is parsed once per read
// connection, the first time that connection runs it, and reused after.
// Unprepared, at 500 commands/s with waits they were 12% of the api's CPU
// in SQLite's parser (docs/performance.md, "Commands round trip"). Every
// read of s.read that is not one of them runs as before.

// lockVersion reads (on PostgreSQL: locks, with FOR UPDATE) the version
// row at the start of every write transaction.
const lockVersion = `SELECT version FROM feed_state WHERE id = 1`

// writeStatements are the statements prepared at open on SQLite.
var writeStatements = []string{
	lockVersion, `SAVEPOINT w`, `ROLLBACK TO SAVEPOINT w`, `RELEASE SAVEPOINT w`,
	createCommandRead, createCommandInsert, commandByIdempotencyKey, dispatchMark,
	reportRequeue, reportReceived, reportProgressDownloading, reportProgressStage, reportResult, reportResultReturning,
}

// readStatements are the reads prepared on the read pool on SQLite.
var readStatements = []string{
	commandWithFleet,
	dispatchAll, dispatchSomeSQLite,
}

// prepareStatements prepares writeStatements on the write pool and
// readStatements on the read pool (SQLite); after it the maps are only
// read. On PostgreSQL s.read runs every query as its pool does.
func (s *store) prepareStatements(ctx context.Context) error {
	s.read = reader{DB: s.rdb}
	if s.driver != DriverSQLite {
		return nil
	}
	var err error
	if s.stmts, err = prepareAll(ctx, s.wdb, writeStatements); err != nil {
		return err
	}
	s.read.stmts, err = prepareAll(ctx, s.rdb, readStatements)
	return err
}

// prepareAll prepares each of qs on db.
func prepareAll(ctx context.Context, db *sql.DB, qs []string) (map[string]*sql.Stmt, error) {
	m := make(map[string]*sql.Stmt, len(qs))
	for _, q := range qs {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			for _, st := range m {
				st.Close()
			}
			return nil, fmt.Errorf("prepare %.40q: %w", q, err)
		}
		m[q] = st
	}
	return m, nil
}

// closeStatements closes the prepared statements.
func (s *store) closeStatements() {
	for _, m := range []map[string]*sql.Stmt{s.stmts, s.read.stmts} {
		for _, st := range m {
			st.Close()
		}
	}
	s.stmts, s.read.stmts = nil, nil
}

// reader is the read pool, running the queries prepared on it (stmts,
// SQLite's readStatements) as prepared statements and any other as the
// pool does. It is a querier.
type reader struct {
	*sql.DB
	stmts map[string]*sql.Stmt
}

// QueryRowContext runs query, prepared if it is one of r's statements.
func (r reader) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := r.stmts[query]; st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.DB.QueryRowContext(ctx, query, args...)
}

// QueryContext runs query, prepared if it is one of r's statements.
func (r reader) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := r.stmts[query]; st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.DB.QueryContext(ctx, query, args...)
}

// execW runs a statement of the command write path in t: prepared if it
// is one of writeStatements on SQLite, as ExecContext does otherwise.
func (t *tx) execW(query string, args ...any) (sql.Result, error) {
	if st := t.s.stmts[query]; st != nil {
		return t.StmtContext(t.ctx, st).ExecContext(t.ctx, args...)
	}
	return t.ExecContext(t.ctx, query, args...)
}

// queryRowW is execW for a query of one row.
func (t *tx) queryRowW(query string, args ...any) *sql.Row {
	if st := t.s.stmts[query]; st != nil {
		return t.StmtContext(t.ctx, st).QueryRowContext(t.ctx, args...)
	}
	return t.QueryRowContext(t.ctx, query, args...)
}
