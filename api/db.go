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

	group     grouper          // writeGroup's queue (db_group.go)
	groupSize func(writes int) // observes each group's size; set by the server

	stmts map[string]*sql.Stmt // prepared on wdb at open, SQLite (db_prepared.go)
}

// sqliteDriver is the database/sql driver name of SQLite (a benchmark
// counts statements with a driver of its own that wraps it).
var sqliteDriver = "sqlite"

// openStore opens the database, applies the migrations and returns the
// store.
func openStore(ctx context.Context, cfg Config, logger *slog.Logger) (*store, error) {
	s := &store{driver: cfg.Driver, log: logger, changed: make(chan struct{}), replica: newID("rep_")}
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
		if s.rdb, err = sql.Open("pgx", cfg.PostgresURL); err != nil {
			return nil, fmt.Errorf("open postgres: %w", redactURLError(err))
		}
		s.rdb.SetMaxOpenConns(cfg.MaxConns)
		s.rdb.SetMaxIdleConns(cfg.MaxConns)
		s.rdb.SetConnMaxIdleTime(5 * time.Minute)
		s.wdb = s.rdb
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

// tx is a write transaction. It holds the feed_state row from its start,
// so write transactions commit in the order of the versions they take.
type tx struct {
	*sql.Tx
	s       *store
	ctx     context.Context
	version int64 // last version taken; written back at commit
	base    int64
	now     time.Time
}

// write runs fn in a write transaction and commits it, or rolls back if fn
// returns an error (which write returns as is).
func (s *store) write(ctx context.Context, fn func(*tx) error) error {
	t, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer t.Rollback()
	w := &tx{Tx: t, s: s, ctx: ctx, now: time.Now()}
	// The one dialect difference that matters: PostgreSQL locks the row;
	// SQLite's BEGIN IMMEDIATE already holds the database's write lock.
	lock := lockVersion
	if s.driver == DriverPostgres {
		lock += ` FOR UPDATE`
	}
	if err := w.queryRowW(lock).Scan(&w.base); err != nil {
		return fmt.Errorf("lock feed version: %w", err)
	}
	w.version = w.base
	if err := fn(w); err != nil {
		return err
	}
	if w.version != w.base {
		if _, err := t.ExecContext(ctx, `UPDATE feed_state SET version = $1 WHERE id = 1`, w.version); err != nil {
			return fmt.Errorf("write feed version: %w", err)
		}
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.observe(w.version)
	return nil
}

// next takes the next change version.
func (t *tx) next() int64 {
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
