package testenv

import (
	"os"
	"testing"
)

// PostgresOwn starts a PostgreSQL server for t alone, stopped and removed
// when t ends: for a test that stops its server ([PG.Stop]) while other
// tests of the binary, running beside it (t.Parallel), use the shared one
// ([Postgres]). It costs an initdb and a start (a few seconds); tests that
// leave the server running share [Postgres]'s instead. Missing PostgreSQL
// is handled as [Postgres] handles it.
func PostgresOwn(t testing.TB) *PG {
	t.Helper()
	bin, err := PostgresBinDir()
	if err != nil {
		missing(t, "PostgreSQL", err, postgresInstallHint)
	}
	pg, err := startPostgres(bin)
	if err != nil {
		t.Fatalf("testenv: start postgres: %v", err)
	}
	t.Cleanup(func() {
		pg.Stop()
		_ = os.RemoveAll(pg.Dir)
	})
	return pg
}
