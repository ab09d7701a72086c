package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestInfluxD(t *testing.T) {
	inf := InfluxD(t)
	if inf.Database != InfluxDatabase {
		t.Errorf("Database = %q, want %q", inf.Database, InfluxDatabase)
	}
	inf.Write(t, "m,k=a int=1i,f=2.5,ok=true 1000\nm,k=b int=2i,f=3,ok=false 2000")
	rows := inf.Query(t, `SELECT "int", f, ok, k FROM m`)
	want := [][]any{
		{"1970-01-01T00:00:00.000001Z", int64(1), 2.5, true, "a"},
		{"1970-01-01T00:00:00.000002Z", int64(2), int64(3), false, "b"},
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("Query = %v, want %v", rows, want)
	}
	if f, ok := Float(rows[1][2]); !ok || f != 3 {
		t.Errorf("Float(%v) = %v, %v", rows[1][2], f, ok)
	}
	series := inf.QuerySeries(t, `SELECT count("int") FROM m GROUP BY k`)
	if len(series) != 2 || series[0].Tags["k"] != "a" || series[1].Tags["k"] != "b" {
		t.Errorf("QuerySeries = %+v, want a series per tag", series)
	}

	// Another database on the same server sees nothing of the first.
	other := inf.WithDatabase(t, "other db")
	if rows := other.Query(t, `SELECT * FROM m`); len(rows) != 0 {
		t.Errorf("other database: %v", rows)
	}

	// Statement errors come back as errors, naming the statement.
	if _, err := inf.Exec(context.Background(), inf.Database, `SELECT * FROM m; SELECT nonsense(`); err == nil ||
		!strings.Contains(err.Error(), "error parsing query") {
		t.Errorf("Exec of a bad query = %v, want a parse error", err)
	}
	if _, err := inf.Exec(context.Background(), inf.Database, `SELECT mean(ok) FROM m`); err == nil ||
		!strings.Contains(err.Error(), "statement 0") {
		t.Errorf("Exec of a failing statement = %v, want its error", err)
	}

	inf.Stop()
	other.Stop() // the same server: a no-op
	if _, err := inf.Exec(context.Background(), inf.Database, "SHOW DATABASES"); err == nil {
		t.Error("query after Stop: nil error")
	}
}

// fakeTB records how a test ended.
type fakeTB struct {
	testing.TB
	mu     sync.Mutex
	fatal  string
	skip   string
	helped bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skip = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// run calls InfluxD as a test body would, in its own goroutine.
func run(tb *fakeTB) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		InfluxD(tb)
	}()
	<-done
}

func TestMissingInfluxD(t *testing.T) {
	t.Setenv("DROVER_INFLUXD", t.TempDir()+"/no-influxd")
	var warned strings.Builder
	stderr = &warned
	t.Cleanup(func() { stderr = os.Stderr; skipWarning = sync.Once{} })

	t.Setenv("CI", "true")
	ci := &fakeTB{TB: t}
	run(ci)
	if !strings.Contains(ci.fatal, "scripts/install-influxd.sh") || !strings.Contains(ci.fatal, "CI=true") || ci.skip != "" {
		t.Errorf("with CI=true: fatal %q, skip %q; want a failure naming the install script", ci.fatal, ci.skip)
	}

	t.Setenv("CI", "")
	dev := &fakeTB{TB: t}
	run(dev)
	if !strings.Contains(dev.skip, "scripts/install-influxd.sh") || !strings.Contains(dev.skip, "SKIPPED") || dev.fatal != "" {
		t.Errorf("without CI: fatal %q, skip %q; want a loud skip naming the install script", dev.fatal, dev.skip)
	}
	if !strings.Contains(warned.String(), "SKIPPING tests that need InfluxDB") {
		t.Errorf("no warning on stderr; got %q", warned.String())
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil || !filepath.IsAbs(root) {
		t.Errorf("ModuleRoot = %q: %v", root, err)
	}
}

func TestQuoteIdent(t *testing.T) {
	if got, want := QuoteIdent(`a "b"\c`), `"a \"b\"\\c"`; got != want {
		t.Errorf("QuoteIdent = %s, want %s", got, want)
	}
}
