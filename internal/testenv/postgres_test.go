package testenv

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestPostgres: the private server takes connections with the password it
// was made with, gives each test its own database, and comes back after a
// stop.
func TestPostgres(t *testing.T) {
	pg := Postgres(t)
	url := pg.NewDatabase(t)
	ctx := context.Background()
	query := func() string {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer conn.Close(ctx)
		var db string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
			t.Fatal(err)
		}
		return db
	}
	if db := query(); db == "postgres" || db == "" {
		t.Errorf("NewDatabase gave %q", db)
	}
	pg.Stop()
	if conn, err := pgx.Connect(ctx, url); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	query()
}
