package lake

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A Store publishes whole files under the lake's names, never overwrites
// one (ErrExists: a writer with deterministic names takes it as done),
// refuses names outside the lake's data files, and leaves nothing in its
// scratch folder.
func TestStorePublish(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(scratchName(dir, "alerts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAt(scratchName(dir, "alerts"), "build-9.tmp", "a crash's leftover"); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(Config{Name: "alerts", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	at := time.Date(2026, 3, 14, 7, 59, 0, 0, time.UTC)
	name := PartitionDir(at) + FileName("alerts", 42, 3)
	if want := "date=2026-03-14/hour=07/alerts-0000000000000000042-000003.parquet"; name != want {
		t.Fatalf("name %q, want %q", name, want)
	}
	if err := s.Publish(ctx, name, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(ctx, name, []byte("second")); !errors.Is(err, ErrExists) {
		t.Fatalf("second Publish of %s: %v, want ErrExists", name, err)
	}
	if b, err := s.ReadFile(ctx, name); err != nil || string(b) != "first" {
		t.Fatalf("ReadFile = %q, %v; want the first content", b, err)
	}
	names, err := s.List(ctx, "date=2026-03-14/")
	if err != nil || len(names) != 1 || names[0] != name {
		t.Fatalf("List = %v, %v", names, err)
	}
	for _, bad := range []string{"../x.parquet", "/abs.parquet", "date=2026-03-14/x.json", "_tmp/x.parquet", "a/../b.parquet"} {
		if err := s.Publish(ctx, bad, []byte("x")); err == nil || errors.Is(err, ErrExists) {
			t.Errorf("Publish(%q) = %v, want a refusal", bad, err)
		}
	}
	left, err := os.ReadDir(filepath.Join(dir, tmpDir, "alerts"))
	if err != nil || len(left) != 0 {
		t.Errorf("scratch folder: %d entries (%v)", len(left), err)
	}
}
