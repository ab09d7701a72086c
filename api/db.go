package api

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrations embed.FS

// store is the database behind the API: one schema (migrations/), two
// dialects. Every statement is written once, with $1-style placeholders,
// which both drivers accept; the differences are in this file, named.
type store struct {
	driver string
	// rdb serves reads. wdb serves write transactions: for SQLite it is a
	// pool of one connection, so that writers queue in Go instead of
	// spinning on SQLITE_BUSY (SQLite has one writer at a time anyway);
	// for PostgreSQL it is rdb.
	rdb, wdb *sql.DB
	log      *slog.Logger

	// feedID names this database in the change feed (migration 00002).
	feedID string
	// replica names this process in its command notifications
	// (commands_notify.go), so that it ignores its own.
	replica string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the version moves
	version int64         // last version this replica has seen

	// lanes are writeGroup's queues, one group transaction in flight each
	// (db_group.go): one on SQLite (one writer), pgGroups on PostgreSQL,
	// where row locks let groups of different devices overlap.
	lanes     []grouper
	groupSize func(writes int) // observes each group's size; set by the server
	// groupRetries counts group transactions run again after a deadlock
	// or serialization failure (PostgreSQL); set by the server.
	groupRetries func()
	// commitTime observes how long each write transaction's commit took;
	// set by the server.
	commitTime func(time.Duration)
	// keys is the server's API-key cache, evicted at the commit of the
	// transactions that change keys or operators (nil: none).
	keys *keyCache

	stmts map[string]*sql.Stmt // prepared on wdb at open, SQLite (db_prepared.go)
	read  reader               // rdb, with the hot reads prepared on SQLite (db_prepared.go)

	// pgCount counts the statements and round trips sent to PostgreSQL
	// (db_postgres.go).
	pgCount pgCounter
}

// sqliteDriver and postgresDriver are the database/sql driver names of
// SQLite and PostgreSQL (a benchmark counts statements with drivers of its
// own that wrap them).
var sqliteDriver, postgresDriver = "sqlite", "pgx"

// openStore opens the database, applies the migrations and returns the
// store.
func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (*store, error) {
	s := &store{driver: cfg.Driver, log: logger, changed: make(chan struct{}), replica: newID("rep_"), lanes: make([]grouper, 1)}
	var err error
	switch cfg.Driver {
	case DriverSQLite:
		path := cfg.sqlitePath()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("open sqlite: %w", err)
		}
		// Created 0600 before SQLite opens it: SQLite gives its -wal and
		// -shm files the database file's mode, and the registry and audit
		// log are nobody else's business on the host.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open sqlite: %w", err)
		}
		f.Close()
		// WAL: readers never block the writer nor the writer readers.
		// synchronous FULL: a commit is fsynced (the control plane writes
		// little; an acknowledged change must survive power loss).
		// _txlock=immediate: a write transaction takes the write lock at
		// BEGIN, so two never deadlock upgrading from read to write.
		q := url.Values{}
		for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
			q.Add("_pragma", p)
		}
		q.Set("_txlock", "immediate")
		dsn := "file:" + path + "?" + q.Encode()
		if s.wdb, err = sql.Open(sqliteDriver, dsn); err != nil {
			return nil, fmt.Errorf("open sqlite %s: %w", path, err)
		}
		s.wdb.SetMaxOpenConns(1)
		if s.rdb, err = sql.Open(sqliteDriver, dsn); err != nil {
			s.wdb.Close()
			return nil, fmt.Errorf("open sqlite %s: %w", path, err)
		}
		s.rdb.SetMaxOpenConns(cfg.MaxConns)
		s.rdb.SetMaxIdleConns(cfg.MaxConns)
	case DriverPostgres:
		if s.rdb, err = openPostgres(cfg.PostgresURL, &s.pgCount); err != nil {
			return nil, fmt.Errorf("open postgres: %w", redactURLError(err))
		}
		s.rdb.SetMaxOpenConns(cfg.MaxConns)
		s.rdb.SetMaxIdleConns(cfg.MaxConns)
		s.rdb.SetConnMaxIdleTime(5 * time.Minute)
		s.wdb = s.rdb
		s.lanes = make([]grouper, pgGroups(cfg.MaxConns))
	default:
		return nil, fmt.Errorf("open store: unknown driver %q", cfg.Driver)
	}
	if err := s.migrate(ctx); err != nil {
		s.close()
		return nil, err
	}
	if err := s.prepareStatements(ctx); err != nil {
		s.close()
		return nil, err
	}
	if s.feedID, err = s.ensureFeedID(ctx); err != nil {
		s.close()
		return nil, err
	}
	if s.version, err = s.currentVersion(ctx); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// ensureFeedID returns the database's feed id, choosing it on the first
// start. Replicas starting together race to set it; the condition makes
// the first one win and every one reads the winner's.
func (s *store) ensureFeedID(ctx context.Context) (string, error) {
	if _, err := s.wdb.ExecContext(ctx, `UPDATE feed_state SET feed_id = $1 WHERE id = 1 AND feed_id = ''`, newID("feed_")); err != nil {
		return "", fmt.Errorf("set feed id: %w", err)
	}
	var id string
	if err := s.wdb.QueryRowContext(ctx, `SELECT feed_id FROM feed_state WHERE id = 1`).Scan(&id); err != nil {
		return "", fmt.Errorf("read feed id: %w", err)
	}
	return id, nil
}

// migrate applies every migration not applied yet, with goose. On
// PostgreSQL goose takes a session lock, so replicas starting together
// migrate once.
func (s *store) migrate(ctx context.Context) error {
	dialect := goose.DialectSQLite3
	var opts []goose.ProviderOption
	if s.driver == DriverPostgres {
		dialect = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	p, err := goose.NewProvider(dialect, s.wdb, sub, opts...)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		s.log.Info("api: schema migration applied", "version", r.Source.Version, "file", filepath.Base(r.Source.Path), "took", r.Duration)
	}
	return nil
}

func (s *store) close() {
	s.closeStatements()
	if s.wdb != nil && s.wdb != s.rdb {
		s.wdb.Close()
	}
	if s.rdb != nil {
		s.rdb.Close()
	}
}

// currentVersion reads the last change version from the database.
func (s *store) currentVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := s.rdb.QueryRowContext(ctx, `SELECT version FROM feed_state WHERE id = 1`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read feed version: %w", err)
	}
	return v, nil
}

// wait returns a channel closed when the version moves past v (at once if
// it already has), as this replica knows it.
func (s *store) wait(v int64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version > v {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.changed
}

// observe records that the database's version is v, waking waiters if it
// moved.
func (s *store) observe(v int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v <= s.version {
		return
	}
	s.version = v
	close(s.changed)
	s.changed = make(chan struct{})
}

// knownVersion is the last version this replica has seen.
func (s *store) knownVersion() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// tx is a write transaction. One of store.write holds the feed_state
// row from its start, so write transactions commit in the order of the
// versions they take. One of a command group (db_group.go) takes no
// version and, on PostgreSQL, does not lock that row.
//
// On SQLite it is a database/sql transaction (Tx). On PostgreSQL Tx is nil
// and the transaction is run by hand on a connection taken for it (conn),
// so that BEGIN and COMMIT travel with other statements
// (db_postgres.go): tx's ExecContext, QueryContext, QueryRowContext and
// PrepareContext send it there.
type tx struct {
	*sql.Tx
	s       *store
	ctx     context.Context
	version int64 // last version taken; written back at commit
	base    int64
	now     time.Time
	// unversioned: the transaction holds no feed_state lock (a command
	// group's); taking a version in it is a bug (next panics).
	unversioned bool
	// notes are the command events to notify at commit (PostgreSQL;
	// commands_notify.go), each encoded.
	notes [][]byte
	// evictKeys and evictOps are the API keys, and the operators whose
	// keys, this transaction changed: evicted from the key cache of every
	// replica at its commit (keycache.go).
	evictKeys, evictOps []string
	// conn is the transaction's connection on PostgreSQL; nil on SQLite.
	conn *sql.Conn
	// begun: BEGIN was sent (PostgreSQL), alone or with the first batch;
	// beginErr is its failure. done: committed.
	begun, done bool
	beginErr    error
}

// write runs fn in a write transaction and commits it, or rolls back if fn
// returns an error (which write returns as is).
func (s *store) write(ctx context.Context, fn func(*tx) error) error {
	return s.writeTx(ctx, true, fn)
}

// writeTx is write; a transaction that is not versioned does not lock the
// feed_state row (on SQLite BEGIN IMMEDIATE serialises it anyway) and may
// not take versions: the command groups' (db_group.go), whose writes
// change no registry row and are kept consistent by the rows they lock.
func (s *store) writeTx(ctx context.Context, versioned bool, fn func(*tx) error) error {
	w := &tx{s: s, ctx: ctx, now: time.Now(), unversioned: !versioned}
	if s.driver == DriverPostgres {
		// BEGIN is not sent yet: it goes with the transaction's first
		// statements (tx.batch, tx.begin).
		c, err := s.wdb.Conn(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		defer c.Close() // after the rollback below: back to the pool
		w.conn = c
		defer w.rollbackPG()
	} else {
		t, err := s.wdb.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		defer t.Rollback()
		w.Tx = t
	}
	if versioned {
		// The one dialect difference that matters: PostgreSQL locks the
		// row; SQLite's BEGIN IMMEDIATE already holds the database's
		// write lock.
		if err := w.lockVersion(); err != nil {
			return fmt.Errorf("lock feed version: %w", err)
		}
	}
	w.version = w.base
	if err := fn(w); err != nil {
		if w.beginErr != nil {
			return fmt.Errorf("begin: %w", w.beginErr)
		}
		return err
	}
	w.ctx = ctx
	began := time.Now()
	if err := w.commit(); err != nil {
		return err
	}
	if s.commitTime != nil {
		s.commitTime(time.Since(began))
	}
	if versioned {
		s.observe(w.version)
	}
	// This replica's cache at once, before the caller is answered; the
	// others' when PostgreSQL delivers the notification (commitPG).
	s.keys.evict(evictRevoke, w.evictKeys, nil)
	s.keys.evict(evictOperator, nil, w.evictOps)
	return nil
}

// lockVersion reads the version row into t.base, locking it on
// PostgreSQL (with BEGIN, in one round trip).
func (t *tx) lockVersion() error {
	if t.Tx != nil {
		return t.queryRowW(lockVersion).Scan(&t.base)
	}
	b := &pgx.Batch{}
	b.Queue(lockVersion + ` FOR UPDATE`)
	return t.batch(b, func(br pgx.BatchResults) error { return br.QueryRow().Scan(&t.base) })
}

// commit writes the version taken back and commits (on PostgreSQL with
// the notifications, in one round trip: commitPG).
func (t *tx) commit() error {
	if t.Tx == nil {
		return t.commitPG()
	}
	if t.version != t.base {
		if _, err := t.ExecContext(t.ctx, setVersion, t.version); err != nil {
			return fmt.Errorf("write feed version: %w", err)
		}
	}
	if err := t.Tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// setVersion writes a transaction's last version back at its commit.
const setVersion = `UPDATE feed_state SET version = $1 WHERE id = 1`

// next takes the next change version.
func (t *tx) next() int64 {
	if t.unversioned {
		panic("api: a change version taken in a command group's transaction, which does not lock feed_state (use store.write)")
	}
	t.version++
	return t.version
}

// ms is t's clock in unix milliseconds.
func (t *tx) ms() int64 { return t.now.UnixMilli() }

// isUniqueViolation reports whether err is a primary key or unique
// constraint failure, in either dialect.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return false
}

// isRetryable reports whether err ended a PostgreSQL transaction that may
// succeed if run again: a deadlock (PostgreSQL aborted one of the
// transactions waiting for each other) or a serialization failure.
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// isForeignKeyViolation reports whether err is a foreign key failure.
func isForeignKeyViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23503"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
	}
	return false
}

// redactURLError keeps a database URL's password out of an error message.
func redactURLError(err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "://"); i >= 0 {
		if j := strings.Index(msg[i:], "@"); j >= 0 {
			return errors.New(msg[:i+3] + "REDACTED" + msg[i+j:])
		}
	}
	return err
}

// nullString maps "" to SQL NULL.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// nullInt maps 0 to SQL NULL.
func nullInt(v int64) any {
	if v == 0 {
		return nil
	}
	return v
}

// bulkPlaceholders is placeholders for the long statements of a bulk
// write, whose values are bound in order: SQLite gets anonymous "?" there,
// because it resolves each "$N" by a linear search of the names seen so
// far (quadratic: 2,800 placeholders took longer to parse than to run).
// A second dialect difference, for speed only.
func (s *store) bulkPlaceholders(from, n int) string {
	if s.driver == DriverSQLite {
		return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
	}
	return placeholders(from, n)
}

// placeholders returns "$from, $from+1, ..." for n values.
func placeholders(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", from+i)
	}
	return b.String()
}
