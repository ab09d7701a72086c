package api

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Benchmarks of the control plane. They run briefly by default (10,000
// devices); the figures in docs/performance.md come from
// DROVER_BENCH_DEVICES=1000000 (see there for the exact commands). Every
// request goes over HTTP to a real server, SQLite or PostgreSQL, without
// the OpenAPI validator of the tests (it would measure itself).

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

// rawClient is a plain HTTP client (no validation).
var rawClient = &http.Client{Timeout: 30 * time.Minute}

func (e *env) raw(b *testing.B, method, path, ct string, body []byte, header map[string]string) (int, []byte) {
	b.Helper()
	req, err := http.NewRequest(method, e.base+path, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.adminKey)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := rawClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return resp.StatusCode, out
}

// importCSV builds a CSV of n devices from index first, spread over 50
// fleets, 5 classes and 9 regions, each with a token hash.
func importCSV(first, n int) []byte {
	var buf bytes.Buffer
	buf.WriteString("id,name,fleet,class,region,token_sha256\n")
	for i := first; i < first+n; i++ {
		h := sha256.Sum256([]byte("token-" + strconv.Itoa(i)))
		fmt.Fprintf(&buf, "veh-%08d,Vehicle %d,fleet-%02d,class-%d,region-%d,%s\n", i, i, i%50, i%5, i%9, hex.EncodeToString(h[:]))
	}
	return buf.Bytes()
}

// seed imports n devices in requests of 100,000.
func seed(b *testing.B, e *env, n int) {
	b.Helper()
	start := time.Now()
	for first := 0; first < n; first += 100_000 {
		status, body := e.raw(b, "POST", "/v1/imports/devices?create_missing=true", "text/csv", importCSV(first, min(100_000, n-first)), nil)
		if status != 200 {
			b.Fatalf("seed import: %d %.300s", status, body)
		}
	}
	b.Logf("seeded %d devices in %v", n, time.Since(start).Round(time.Millisecond))
}

// BenchmarkImport100k: one import of 100,000 devices per iteration, into a
// fresh database. Reports devices/s.
func BenchmarkImport100k(b *testing.B) {
	const n = 100_000
	body := importCSV(0, n)
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				e := startEnv(b, be)
				b.StartTimer()
				start := time.Now()
				status, out := e.raw(b, "POST", "/v1/imports/devices?create_missing=true", "text/csv", body, nil)
				total += time.Since(start)
				if status != 200 {
					b.Fatalf("import: %d %.300s", status, out)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "devices/s")
		})
	}
}

// BenchmarkList: list requests (100 devices, a fleet filter, a random
// starting cursor) against DROVER_BENCH_DEVICES devices. Reports p50 and
// p99 latency.
func BenchmarkList(b *testing.B) {
	n := benchDevices(b, 10_000)
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			e := startEnv(b, be)
			seed(b, e, n)
			rng := rand.New(rand.NewPCG(1, 2))
			var lat []time.Duration
			for b.Loop() {
				fleet := fmt.Sprintf("fleet-%02d", rng.IntN(50))
				cursor := encodeCursor(fmt.Sprintf("veh-%08d", rng.IntN(n)))
				start := time.Now()
				status, out := e.raw(b, "GET", "/v1/devices?limit=100&fleet="+fleet+"&cursor="+cursor, "", nil, nil)
				lat = append(lat, time.Since(start))
				if status != 200 {
					b.Fatalf("list: %d %.300s", status, out)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkSnapshot: the full snapshot of DROVER_BENCH_DEVICES devices, as
// a follower takes it (gzip), decoded into the compact in-memory form the
// docs describe. Reports the time, the bytes on the wire per device and
// the follower's heap per device.
func BenchmarkSnapshot(b *testing.B) {
	n := benchDevices(b, 10_000)
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			e := startEnv(b, be, func(c *Config) { c.FeedMaxWait = time.Second })
			seed(b, e, n)
			var wire, heap float64
			for b.Loop() {
				req, _ := http.NewRequest("GET", e.base+"/v1/feed/snapshot", nil)
				req.Header.Set("Authorization", "Bearer "+e.adminKey)
				req.Header.Set("Accept-Encoding", "gzip")
				resp, err := rawClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				counted := &countingReader{r: resp.Body}
				body, err := gunzip(counted)
				if err != nil {
					b.Fatal(err)
				}
				f, err := loadCompact(body)
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if len(f.byID) != n {
					b.Fatalf("snapshot: %d devices, want %d", len(f.byID), n)
				}
				// The follower's copy is what is freed when it goes: heap
				// with it live, minus heap once it is gone.
				var live, gone runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&live)
				runtime.KeepAlive(f)
				f = nil
				runtime.GC()
				runtime.ReadMemStats(&gone)
				wire = float64(counted.n) / float64(n)
				heap = (float64(live.HeapAlloc) - float64(gone.HeapAlloc)) / float64(n)
			}
			b.ReportMetric(wire, "wire-bytes/device")
			b.ReportMetric(heap, "follower-heap-bytes/device")
		})
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// compact is the follower's in-memory copy as docs/api.md sizes it: per
// device an entry with the token hash as bytes, the state and interned
// fleet, class and region; a rotation's previous token in a side table.
type compact struct {
	byID    map[string]*compactEntry
	names   map[string]uint32
	prev    map[string]prevToken
	version int64
}

type compactEntry struct {
	hash                 [32]byte
	state                uint8
	fleet, class, region uint32
}

type prevToken struct {
	hash  [32]byte
	until int64
}

func loadCompact(r io.Reader) (*compact, error) {
	c := &compact{byID: map[string]*compactEntry{}, names: map[string]uint32{"": 0}, prev: map[string]prevToken{}}
	intern := func(s string) uint32 {
		if v, ok := c.names[s]; ok {
			return v
		}
		v := uint32(len(c.names))
		c.names[s] = v
		return v
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	first, ended := true, false
	for sc.Scan() {
		line := sc.Bytes()
		if first {
			var h struct{ Snapshot struct{ Version int64 } }
			if err := json.Unmarshal(line, &h); err != nil {
				return nil, err
			}
			c.version, first = h.Snapshot.Version, false
			continue
		}
		if bytes.HasPrefix(line, []byte(`{"end"`)) {
			ended = true
			break
		}
		var d FeedDevice
		if err := json.Unmarshal(line, &d); err != nil {
			return nil, err
		}
		e := &compactEntry{fleet: intern(d.Fleet), class: intern(d.Class), region: intern(d.Region)}
		if d.State != StateActive {
			e.state = 1
		}
		hex.Decode(e.hash[:], []byte(d.H))
		c.byID[d.ID] = e
		if d.PH != "" {
			var p prevToken
			hex.Decode(p.hash[:], []byte(d.PH))
			p.until = d.PU
			c.prev[d.ID] = p
		}
	}
	if !ended {
		return nil, fmt.Errorf("snapshot cut")
	}
	return c, sc.Err()
}

func gunzip(r io.Reader) (io.Reader, error) { return gzipNewReader(r) }
