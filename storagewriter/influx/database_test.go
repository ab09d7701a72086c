package influx

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/sink"
)

// databases lists the databases of the server.
func databases(t *testing.T, inf *testenv.Influx) []string {
	t.Helper()
	series, err := inf.Exec(context.Background(), "", "SHOW DATABASES")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range series {
		for _, row := range s.Values {
			names = append(names, row[0].(string))
		}
	}
	return names
}

// TestMissingDatabase, against a real InfluxDB: Check and Write say the
// database does not exist and what to do, State and the gauge say so until
// a write works; with CreateDatabase, Check creates it.
func TestMissingDatabase(t *testing.T) {
	inf := testenv.InfluxD(t)
	ctx := context.Background()

	s, _ := newTestSink(t, inf.URL, "not_yet")
	err := s.Check(ctx)
	if !sink.IsMisconfigured(err) || !strings.Contains(err.Error(), `database "not_yet" does not exist`) ||
		!strings.Contains(err.Error(), "-influx-create-database") {
		t.Fatalf("Check = %v; want a misconfiguration naming the database and the flag", err)
	}
	if st := s.State(); st == nil || st.Error() != err.Error() {
		t.Errorf("State = %v, want the Check's error", st)
	}
	if got := testutil.ToFloat64(s.metrics.dbMissing); got != 1 {
		t.Errorf("database_missing = %v, want 1", got)
	}
	werr := s.Write(ctx, fleetBatch(3, 1, 1))
	if !sink.IsMisconfigured(werr) || sink.IsPermanent(werr) || !strings.Contains(werr.Error(), "HTTP 404") {
		t.Fatalf("Write = %v; want a transient misconfiguration (the records are not at fault)", werr)
	}
	if slices.Contains(databases(t, inf), "not_yet") {
		t.Fatal("database created without -influx-create-database")
	}

	// Created by someone else: the next write works and clears the state.
	inf.CreateDatabase(t, "not_yet")
	if err := s.Write(ctx, fleetBatch(3, 1, 1)); err != nil {
		t.Fatalf("Write once the database exists: %v", err)
	}
	if st := s.State(); st != nil {
		t.Errorf("State after a write that worked = %v", st)
	}
	if got := testutil.ToFloat64(s.metrics.dbMissing); got != 0 {
		t.Errorf("database_missing = %v after a write that worked, want 0", got)
	}

	// With CreateDatabase, Check creates it.
	c, _ := newTestSink(t, inf.URL, "made by drover", func(c *Config) { c.CreateDatabase = true })
	if err := c.Check(ctx); err != nil {
		t.Fatalf("Check with CreateDatabase = %v", err)
	}
	if !slices.Contains(databases(t, inf), "made by drover") {
		t.Fatalf("databases %v lack the one Check should have created", databases(t, inf))
	}
	if got := testutil.ToFloat64(c.metrics.dbCreated); got != 1 {
		t.Errorf("databases_created_total = %v, want 1", got)
	}
	if err := c.Write(ctx, fleetBatch(3, 1, 1)); err != nil || c.State() != nil {
		t.Errorf("Write into the created database = %v, state %v", err, c.State())
	}

	// A write that finds the database gone creates it again.
	if _, err := inf.Exec(ctx, "", `DROP DATABASE "made by drover"`); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, fleetBatch(3, 1, 1)); err == nil {
		t.Fatal("Write into a dropped database worked at once; want a retry")
	}
	if err := c.Write(ctx, fleetBatch(3, 1, 1)); err != nil {
		t.Errorf("Write after the sink created the database again = %v", err)
	}

	// A missing retention policy is a misconfiguration too (InfluxDB 1.8
	// answers 500), not an outage.
	rp, _ := newTestSink(t, inf.URL, "not_yet", func(c *Config) { c.RetentionPolicy = "nope" })
	err = rp.Check(ctx)
	if !sink.IsMisconfigured(err) || !strings.Contains(err.Error(), `retention policy "nope" does not exist`) {
		t.Errorf("Check with a missing retention policy = %v", err)
	}
	if err := rp.Write(ctx, fleetBatch(1, 1, 1)); !sink.IsMisconfigured(err) {
		t.Errorf("Write with a missing retention policy = %v, want a misconfiguration", err)
	}
}

// TestCheckRefusedCredentials: a 401 (auth on, bad token) is a
// misconfiguration that says to fix the token. The test server stands in
// for InfluxDB with authentication on, which the test influxd runs without.
func TestCheckRefusedCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Token u:wrong" {
			t.Errorf("Authorization %q", r.Header.Get("Authorization"))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"authorization failed"}`))
	}))
	defer srv.Close()
	s, _ := newTestSink(t, srv.URL, "drover", func(c *Config) { c.Token = "u:wrong" })
	err := s.Check(context.Background())
	if !sink.IsMisconfigured(err) || !strings.Contains(err.Error(), "credentials") || !strings.Contains(err.Error(), "authorization failed") {
		t.Errorf("Check = %v", err)
	}
	if strings.Contains(err.Error(), "u:wrong") {
		t.Errorf("the error shows the token: %v", err)
	}
}
