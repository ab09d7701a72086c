package alerts

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// While the rule set is compiled the engine evaluates nothing, so it is not
// ready, and /readyz says why, even once everything else has started.
func TestNotReadyWhileCompiling(t *testing.T) {
	rs := tripRules("http://127.0.0.1:1/hook", "a-secret-of-16-bytes")
	if len(rs.Geofences) == 0 {
		t.Fatal("the trip rules have no geofence")
	}
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	writeRules(t, rulesPath, rs)
	cfg := testEngineConfig(t, t.TempDir(), []string{"tcp://127.0.0.1:1"}, rulesPath)
	e, err := New(cfg, testLogger("alerts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	e.hook = func(point string) {
		if point == "compiling" {
			close(entered)
			<-release
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-entered:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the rule set was not compiled")
	}
	waitFor(t, 20*time.Second, "everything but the rule set ready", func() bool { return *e.ready.Load() == nil })
	err = e.Ready()
	if err == nil || !strings.Contains(err.Error(), "compiling rule set") ||
		!strings.Contains(err.Error(), "geofences") {
		t.Errorf("Ready while compiling = %v, want an error saying it compiles fences", err)
	}
	close(release)
	waitFor(t, 20*time.Second, "ready once compiled", func() bool { return e.Ready() == nil })
}
