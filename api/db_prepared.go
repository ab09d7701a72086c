package api

import (
	"context"
	"database/sql"
	"fmt"
)

// Prepared statements for the command write path on SQLite.
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

// lockVersion reads (on PostgreSQL: locks, with FOR UPDATE) the version
// row at the start of every write transaction.
const lockVersion = `SELECT version FROM feed_state WHERE id = 1`

// writeStatements are the statements prepared at open on SQLite.
var writeStatements = []string{
	lockVersion, `SAVEPOINT w`, `ROLLBACK TO SAVEPOINT w`, `RELEASE SAVEPOINT w`,
	createCommandRead, createCommandInsert, commandByIdempotencyKey, dispatchMark,
	reportRequeue, reportReceived, reportProgress + reportProgressBytes + reportProgressWhere,
	reportProgress + reportProgressWhere, reportResult,
}

// prepareStatements prepares writeStatements on the write pool (SQLite);
// after it the map is only read.
func (s *store) prepareStatements(ctx context.Context) error {
	if s.driver != DriverSQLite {
		return nil
	}
	s.stmts = make(map[string]*sql.Stmt, len(writeStatements))
	for _, q := range writeStatements {
		st, err := s.wdb.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare %.40q: %w", q, err)
		}
		s.stmts[q] = st
	}
	return nil
}

// closeStatements closes the prepared statements.
func (s *store) closeStatements() {
	for _, st := range s.stmts {
		st.Close()
	}
	s.stmts = nil
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
