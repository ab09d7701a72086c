package testenv

import (
	"context"
	"os"
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

// TestPostgresOwn: a test's own server is not the shared one; stopping it
// leaves the shared one up, and it is gone when the test ends.
func TestPostgresOwn(t *testing.T) {
	shared := Postgres(t)
	var own *PG
	t.Run("own", func(t *testing.T) {
		own = PostgresOwn(t)
		if own == shared || own.AdminURL == shared.AdminURL {
			t.Fatalf("PostgresOwn gave the shared server (%s)", shared.AdminURL)
		}
		url := own.NewDatabase(t)
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Fatalf("connect to the own server: %v", err)
		}
		conn.Close(context.Background())
		own.Stop()
		conn, err = pgx.Connect(context.Background(), shared.NewDatabase(t))
		if err != nil {
			t.Fatalf("the shared server after the own one stopped: %v", err)
		}
		conn.Close(context.Background())
		if err := own.Start(); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(own.Dir); !os.IsNotExist(err) {
		t.Errorf("the own server's directory %s outlived its test (%v)", own.Dir, err)
	}
	if conn, err := pgx.Connect(context.Background(), own.AdminURL); err == nil {
		conn.Close(context.Background())
		t.Error("the own server still takes connections after its test")
	}
}
