package lake

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/telemetry"
)

// What an analyst gets: DuckDB reads the lake with hive partitioning, the
// columns have the documented types, and both documented deduplication
// queries return each reading once although every batch was written twice.
func TestDuckDBReadsLake(t *testing.T) {
	node, module := testenv.DuckDBNode(t)
	cfg := testConfig(t)
	s := newTestSink(t, cfg)
	var recs []*telemetry.EnrichedRecord
	for i := range 3 {
		b := makeRecords(300, 6, baseTime.Add(time.Duration(i)*time.Hour), time.Second, uint64(1+1000*i))
		for range 2 { // a retry after a lost ack
			if err := s.Write(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		}
		recs = append(recs, b...)
	}
	// Files being built and journals must not confuse the reader.
	if err := writeFileAt(scratchName(cfg.Dir, cfg.Name), "build-1.tmp", "half a file"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := testenv.RunDuckDB(t, ctx, node, module, filepath.Join("testdata", "duckdb_check.cjs"), cfg.Dir)
	var got struct {
		Total      int               `json:"total"`
		DistinctOn int               `json:"distinct_on"`
		Qualify    int               `json:"qualify"`
		Partitions []string          `json:"partitions"`
		Types      map[string]string `json:"types"`
		TypedHours []int             `json:"typed_hours"`
		WithOil    int               `json:"with_oil"`
		Sample     map[string]any    `json:"sample"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("duckdb_check output %q: %v", out, err)
	}
	t.Logf("duckdb: %s", out)
	if got.Total != 2*len(recs) || got.DistinctOn != len(recs) || got.Qualify != len(recs) {
		t.Errorf("rows: total %d, DISTINCT ON %d, QUALIFY %d; want %d, %d, %d",
			got.Total, got.DistinctOn, got.Qualify, 2*len(recs), len(recs), len(recs))
	}
	if want := []string{"2025-03-14/07", "2025-03-14/08", "2025-03-14/09"}; !slices.Equal(got.Partitions, want) {
		t.Errorf("partitions %v, want %v", got.Partitions, want)
	}
	wantTypes := map[string]string{
		"device_id": "VARCHAR", "seq": "BIGINT", "time": "TIMESTAMP WITH TIME ZONE", "received_ms": "BIGINT",
		"lat": "DOUBLE", "lon": "DOUBLE", "speed_kmh": "FLOAT", "satellites": "INTEGER", "ignition": "BOOLEAN",
		"odometer_km": "DOUBLE", "extra": "MAP(VARCHAR, DOUBLE)", "fleet": "VARCHAR", "date": "DATE",
		"hour": "VARCHAR", // "07": see hive_types in docs/lake.md
	}
	for col, want := range wantTypes {
		if got.Types[col] != want {
			t.Errorf("column %s: DuckDB type %q, want %q", col, got.Types[col], want)
		}
	}
	if !slices.Equal(got.TypedHours, []int{8, 9}) {
		t.Errorf("hours 8..9 with hive_types: %v", got.TypedHours)
	}
	// makeRecords gives every third reading extra sensors.
	if want := 2 * len(recs) / 3; got.WithOil != want {
		t.Errorf("rows with extra['oil_pressure_kpa']: %d, want %d", got.WithOil, want)
	}
	if got.Sample["device_id"] != "dev-0001" || got.Sample["time"] != "2025-03-14T07:30:00.000" {
		t.Errorf("sample row %v", got.Sample)
	}
}
