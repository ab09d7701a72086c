package registry

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
)

// Benchmarks of the in-memory registry: the cost of the hot path (a
// device's authentication, a reading's enrichment) against the plain map
// the file registry used before (a map of id to entry holding the Device
// and its hash), and the heap a registry takes per device.
//
//	go test -run '^$' -bench 'BenchmarkAuthorize|BenchmarkLookup' -benchtime 2s ./internal/registry/
//	DROVER_BENCH_DEVICES=1000000 go test -run '^$' -bench 'BenchmarkRegistryHeap' -benchtime 3x ./internal/registry/

func benchN(b *testing.B, def int) int {
	if s := os.Getenv("DROVER_BENCH_DEVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("DROVER_BENCH_DEVICES=%q", s)
		}
		return n
	}
	return def
}

func benchID(i int) string { return fmt.Sprintf("veh-%08d", i) }

// benchChange is device i as the feed would carry it: 50 fleets, 5
// classes, 9 regions, a token.
func benchChange(i int) Change {
	return Change{ID: benchID(i), State: StateActive, HasToken: true, Token: auth.Hash("token-" + strconv.Itoa(i)),
		Labels: Labels{Fleet: fmt.Sprintf("fleet-%02d", i%50), Class: fmt.Sprintf("class-%d", i%5), Region: fmt.Sprintf("region-%d", i%9)}}
}

// benchRegistry builds a registry of n devices; with overlay > 0, that
// many changes are applied after (a registry between two folds).
func benchRegistry(n, overlay int) *Registry {
	b := newBuilder()
	s := b.startSnapshot(n)
	for i := range n {
		s.add(benchChange(i))
	}
	r := s.finish("feed", 1)
	if overlay > 0 {
		chs := make([]Change, overlay)
		for i := range chs {
			c := benchChange(i * 7 % n)
			c.Labels.Region = "moved"
			chs[i] = c
		}
		r = b.apply(chs, 2, time.Now())
	}
	return r
}

// oldEntry and oldMap are the file registry's form before this one: the
// baseline the hot path must stay as cheap as.
type oldEntry struct {
	Device
	hash auth.Digest
}

func oldMap(n int) map[string]*oldEntry {
	m := make(map[string]*oldEntry, n)
	for i := range n {
		c := benchChange(i)
		m[c.ID] = &oldEntry{Device: Device{ID: c.ID, TokenSHA256: c.Token.String(), Fleet: c.Labels.Fleet, Class: c.Labels.Class, Region: c.Labels.Region}, hash: c.Token}
	}
	return m
}

var sinkDevice Device

// BenchmarkAuthorize: a device's authentication (hashing its token is
// most of it), against the old map lookup with the same hash and compare.
func BenchmarkAuthorize(b *testing.B) {
	for _, n := range []int{10_000, benchN(b, 1_000_000)} {
		ids := make([]string, 4096)
		tokens := make([]string, len(ids))
		for i := range ids {
			k := i * 7919 % n
			ids[i], tokens[i] = benchID(k), "token-"+strconv.Itoa(k)
		}
		for _, overlay := range []int{0, 4000} {
			r := benchRegistry(n, overlay)
			b.Run(fmt.Sprintf("devices=%d/overlay=%d", n, overlay), func(b *testing.B) {
				now := time.Now()
				i := 0
				for b.Loop() {
					d, _, err := r.Authorize(ids[i%len(ids)], tokens[i%len(ids)], now)
					if err != nil {
						b.Fatal(err)
					}
					sinkDevice = d
					i++
				}
			})
		}
		old := oldMap(n)
		b.Run(fmt.Sprintf("devices=%d/baseline-map", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				e := old[ids[i%len(ids)]]
				if e == nil || !e.hash.Matches(tokens[i%len(ids)]) {
					b.Fatal("baseline: refused")
				}
				sinkDevice = e.Device
				i++
			}
		})
	}
}

// BenchmarkLookup: a reading's enrichment (the router, per record).
func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10_000, benchN(b, 1_000_000)} {
		ids := make([]string, 4096)
		for i := range ids {
			ids[i] = benchID(i * 7919 % n)
		}
		for _, overlay := range []int{0, 4000} {
			r := benchRegistry(n, overlay)
			b.Run(fmt.Sprintf("devices=%d/overlay=%d", n, overlay), func(b *testing.B) {
				i := 0
				for b.Loop() {
					d, ok := r.Lookup(ids[i%len(ids)])
					if !ok {
						b.Fatal("unknown")
					}
					sinkDevice = d
					i++
				}
			})
		}
		old := oldMap(n)
		b.Run(fmt.Sprintf("devices=%d/baseline-map", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				e := old[ids[i%len(ids)]]
				if e == nil {
					b.Fatal("unknown")
				}
				sinkDevice = e.Device
				i++
			}
		})
	}
}

// BenchmarkRegistryHeap: the heap a registry of DROVER_BENCH_DEVICES
// devices takes (default 100,000), per device: with it live, minus once it
// is gone.
func BenchmarkRegistryHeap(b *testing.B) {
	n := benchN(b, 100_000)
	var perDevice float64
	for b.Loop() {
		var before, live, gone runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r := benchRegistry(n, 0)
		runtime.GC()
		runtime.ReadMemStats(&live)
		if r.Len() != n {
			b.Fatal(r.Len())
		}
		runtime.KeepAlive(r)
		r = nil
		runtime.GC()
		runtime.ReadMemStats(&gone)
		perDevice = (float64(live.HeapAlloc) - float64(gone.HeapAlloc)) / float64(n)
	}
	b.ReportMetric(perDevice, "heap-bytes/device")
}
