package api

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestShutdownEndsLongPolls: a stop does not wait for followers' long polls
// (they would hold it for up to -feed-max-wait): Run returns within a
// couple of seconds with a poll of 60 s open. Ready says no before Run has
// opened the database.
func TestShutdownEndsLongPolls(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", t.TempDir()
	srv, err := New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Ready() == nil {
		t.Error("ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-done:
		t.Fatal(err)
	}
	if err := srv.Ready(); err != nil {
		t.Errorf("not ready once started: %v", err)
	}
	key := readKey(t, cfg.DataDir)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		req, _ := http.NewRequest("GET", "http://"+srv.Addr()+"/v1/feed/changes?since=1&wait=60s", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, 5*time.Second, "the long poll to wait", func() bool {
		return testutil.ToFloat64(srv.metrics.followers) == 1
	})
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		// The bug this catches is a stop that waits for the poll's 60 s; the bound is far from
		// that and far above a stop's few milliseconds, so a loaded machine cannot fail it.
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("stop took %v with a 60 s long poll open", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return with a long poll open")
	}
	<-polled
}

func readKey(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
