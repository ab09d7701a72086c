package registry_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// Benchmarks of following the control plane, against a real drover api
// (SQLite, and a private PostgreSQL) in this process, over HTTP. They run
// briefly by default; the figures in docs/performance.md come from:
//
//	DROVER_BENCH_DEVICES=1000000 go test -run '^$' -bench 'BenchmarkFollowerSync' -benchtime 3x -timeout 60m ./internal/registry/
//	DROVER_BENCH_DEVICES=100000 go test -run '^$' -bench 'BenchmarkPropagation' -benchtime 200x -timeout 30m ./internal/registry/

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.StopPostgres()
	os.Exit(code)
}

func benchDevices(b *testing.B, def int) int {
	if s := os.Getenv("DROVER_BENCH_DEVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("DROVER_BENCH_DEVICES=%q", s)
		}
		return n
	}
	return def
}

// benchBackends are the api's databases.
var benchBackends = []struct {
	name string
	mod  func(b *testing.B) func(*api.Config)
}{
	{"sqlite", func(*testing.B) func(*api.Config) { return func(*api.Config) {} }},
	{"postgres", func(b *testing.B) func(*api.Config) {
		url := testenv.Postgres(b).NewDatabase(b)
		return func(c *api.Config) { c.Driver, c.PostgresURL = api.DriverPostgres, url }
	}},
}

// seedDevices imports n devices (50 fleets, 5 classes, 9 regions, a token
// each) in requests of 100,000.
func seedDevices(b *testing.B, a *apiServer, n int) {
	b.Helper()
	start := time.Now()
	for first := 0; first < n; first += 100_000 {
		var buf bytes.Buffer
		buf.WriteString("id,fleet,class,region,token_sha256\n")
		for i := first; i < min(n, first+100_000); i++ {
			h := sha256.Sum256([]byte("token-" + strconv.Itoa(i)))
			fmt.Fprintf(&buf, "veh-%08d,fleet-%02d,class-%d,region-%d,%s\n", i, i%50, i%5, i%9, hex.EncodeToString(h[:]))
		}
		req, _ := http.NewRequest("POST", a.url+"/v1/imports/devices?create_missing=true", &buf)
		req.Header.Set("Authorization", "Bearer "+a.adminKey)
		req.Header.Set("Content-Type", "text/csv")
		resp, err := (&http.Client{Timeout: 30 * time.Minute}).Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("import: %d %.500s", resp.StatusCode, body)
		}
	}
	b.Logf("seeded %d devices in %v", n, time.Since(start).Round(time.Millisecond))
}

// rss is the process's resident memory (Linux), 0 elsewhere.
func rss() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}

// BenchmarkFollowerSync: a frontend's full sync, from nothing to a
// registry in force, of DROVER_BENCH_DEVICES devices (default 10,000):
// the time (goal: under 10 s at 1,000,000) and the follower's heap per
// device (goal: at most 200 bytes), with it live minus once it is gone;
// also the process's RSS growth per device while it is live (noisier:
// the API runs in this process too).
func BenchmarkFollowerSync(b *testing.B) {
	n := benchDevices(b, 10_000)
	for _, be := range benchBackends {
		b.Run(be.name, func(b *testing.B) {
			dir := b.TempDir()
			a := startAPI(b, dir, freeAddr(b), be.mod(b))
			seedDevices(b, a, n)
			var took time.Duration
			var heap, rssPer float64
			for b.Loop() {
				var before, live, gone runtime.MemStats
				runtime.GC()
				debug.FreeOSMemory()
				runtime.ReadMemStats(&before)
				rss0 := rss()
				cfg := followConfig(a.url, filepath.Join(dir, "follower-key"), "") // no cache: the sync alone
				start := time.Now()
				f := startFollowerB(b, cfg)
				if err := f.s.Wait(context.Background()); err != nil {
					b.Fatal(err)
				}
				took = time.Since(start)
				f.stop()
				if got := f.s.Current().Len(); got != n {
					b.Fatalf("%d devices after the sync, want %d", got, n)
				}
				runtime.GC()
				runtime.ReadMemStats(&live)
				rss1 := rss()
				runtime.KeepAlive(f)
				f = nil
				runtime.GC()
				runtime.ReadMemStats(&gone)
				heap = (float64(live.HeapAlloc) - float64(gone.HeapAlloc)) / float64(n)
				rssPer = (rss1 - rss0) / float64(n)
			}
			b.ReportMetric(took.Seconds(), "sync-s")
			b.ReportMetric(heap, "heap-bytes/device")
			b.ReportMetric(rssPer, "rss-bytes/device")
		})
	}
}

// startFollowerB is startFollower without a cleanup (which would keep the
// follower, and its registry, reachable): the caller stops it.
func startFollowerB(b *testing.B, cfg registry.FollowConfig) *follower {
	s, err := registry.NewFollower(cfg, quiet(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{t: b, s: s, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(f.done); _ = s.Run(ctx) }()
	return f
}

// BenchmarkPropagation: a change made through the API until every one of
// DROVER_BENCH_FOLLOWERS followers (default 20) has it in force, over
// DROVER_BENCH_DEVICES registered devices (default 10,000). One change per
// iteration; reports p50, p99 and the worst (goal: p99 under 2 s).
func BenchmarkPropagation(b *testing.B) {
	n := benchDevices(b, 10_000)
	followers := 20
	if s := os.Getenv("DROVER_BENCH_FOLLOWERS"); s != "" {
		followers, _ = strconv.Atoi(s)
	}
	for _, be := range benchBackends {
		b.Run(be.name, func(b *testing.B) {
			dir := b.TempDir()
			a := startAPI(b, dir, freeAddr(b), be.mod(b), func(c *api.Config) { c.FeedPoll = 250 * time.Millisecond })
			seedDevices(b, a, n)
			a.call("POST", "/v1/regions", map[string]string{"id": "moved-a"}, nil)
			a.call("POST", "/v1/regions", map[string]string{"id": "moved-b"}, nil)
			type seen struct {
				mu sync.Mutex
				at map[string]time.Time // device id + region → when this follower had it
			}
			fs := make([]*follower, followers)
			marks := make([]*seen, followers)
			for i := range fs {
				fs[i] = startFollower(b, followConfig(a.url, filepath.Join(dir, "follower-key"), ""))
				if err := fs[i].s.Wait(context.Background()); err != nil {
					b.Fatal(err)
				}
				m := &seen{at: map[string]time.Time{}}
				marks[i] = m
				st := fs[i].s
				st.Subscribe(func(u registry.Update) {
					now := time.Now()
					m.mu.Lock()
					for _, id := range u.Changed {
						if d, ok := u.Registry.Lookup(id); ok {
							m.at[id+"/"+d.Region] = now
						}
					}
					m.mu.Unlock()
				})
			}
			var lat []time.Duration
			i := 0
			for b.Loop() {
				id := fmt.Sprintf("veh-%08d", i*7919%n)
				region := []string{"moved-a", "moved-b"}[i%2]
				i++
				start := time.Now()
				a.call("PATCH", "/v1/devices/"+id, map[string]any{"region": region}, nil)
				var worst time.Duration
				for _, m := range marks {
					m.mu.Lock()
					deadline := time.Now().Add(30 * time.Second)
					for {
						at, ok := m.at[id+"/"+region]
						if ok && !at.Before(start) {
							worst = max(worst, at.Sub(start))
							break
						}
						if time.Now().After(deadline) {
							m.mu.Unlock()
							b.Fatalf("a follower did not get the change of %s within 30 s", id)
						}
						m.mu.Unlock()
						time.Sleep(time.Millisecond)
						m.mu.Lock()
					}
					m.mu.Unlock()
				}
				lat = append(lat, worst)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
		})
	}
}
