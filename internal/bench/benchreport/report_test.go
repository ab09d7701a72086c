package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGenerate runs the generator on a small results dir (testdata/results: every scenario but
// the end-to-end one) and checks the section it writes, that the rest of the document is kept
// byte for byte, and that the plots are PNGs of the expected size.
func TestGenerate(t *testing.T) {
	dir := t.TempDir()
	doc := filepath.Join(dir, "performance.md")
	before := "# drover performance\n\nHand-written text.\n\n" + beginMarker + "\nold generated text\n"
	after := endMarker + "\n\n## Later section\n\nMore hand-written text.\n"
	if err := os.WriteFile(doc, []byte(before+after), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	if err := generate("testdata/results", doc, img); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	head := "# drover performance\n\nHand-written text.\n\n" + beginMarker + "\n"
	if !strings.HasPrefix(got, head) || !strings.HasSuffix(got, after) || strings.Contains(got, "old generated text") {
		t.Errorf("the text around the markers changed, or the old section stayed:\n%s", got)
	}
	for _, want := range []string{
		"1-minute load average 1.5 at the start and 2.3 at the end",
		"DURATION=15s per scenario, 15s for the end-to-end run",
		"| ingest throughput | readings durably acked (frontend queue fsynced) through one frontend, 1,000 devices, frames of 50, window 8 | **300,000 readings/s** (900,000 in 3.0 s), ack p50 12.5 ms, p99 55.3 ms |",
		"| end to end | sim → frontend → router → InfluxDB and the lake | not run |",
		"p50 **3.3 ms**, p90 8 ms, p99 **17.8 ms**, max 107 ms (10,000 acked/s)",
		"(all vehicles), 1,000 vehicles × 1 readings/s | from device time p50 **35 ms**, p99 **98 ms**, max 176 ms",
		"**5.7 KiB** per connection (10,021 goroutines, RSS 102 MiB)",
		"messages of 1,700 bytes",
		"| drover (ingest throughput above) | fsync (group commit) | **300,000** | 6,000 frames | 12.5 ms | 55.3 ms | 1 |",
		// The ratios: drover's readings/s over each NATS run's.
		"| NATS JetStream, `sync_interval: always` | fsync | **30,000** | 600 | 1,200 ms | 1,600 ms | **10×** |",
		"| NATS JetStream, default sync | write, fsync every 2 min | **1,000,000** | 20,000 | 350 ms | 880 ms | **0.3×** |",
		"![Throughput over time](img/bench-e2e-throughput.png)",
		// Pinning, the frontend's view beside the device's, and the per-process figures.
		"pinned with taskset: the load generators (simulator, livelat, natspeer) on CPU 1, the servers (drover, influxd, nats-server) on CPU 0",
		"(10,000 acked/s); the frontend's own view (frame read → ack written, interpolated in its histogram's buckets), same steady span: p50 1.6 ms, p99 8.75 ms, 99.3% under 10 ms |",
		"| ingest throughput (300,000 readings) | router | 3.00 | 500 | 0.9 |",
		"| ack latency (100,000 readings) | frontend | 65.00 | 384 | 6.5 |",
		"; 500 clients following every vehicle, **2 of them disconnected** |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the section lacks %q:\n%s", want, got)
		}
	}
	for _, name := range []string{throughputPNG, latencyPNG} {
		f, err := os.ReadFile(filepath.Join(img, name))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(f))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if cfg.Width < 800 || cfg.Height < 400 {
			t.Errorf("%s: %d × %d pixels", name, cfg.Width, cfg.Height)
		}
	}

	// Run twice: the same document (the section replaced, not added).
	if err := generate("testdata/results", doc, img); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(doc); !bytes.Equal(b, b2) {
		t.Error("a second run changed the document")
	}
}

func TestReplaceSectionNeedsMarkers(t *testing.T) {
	for _, doc := range []string{"no markers", endMarker + "\n" + beginMarker, beginMarker + " only"} {
		if _, err := replaceSection([]byte(doc), "x"); err == nil {
			t.Errorf("%q: no error", doc)
		}
	}
}

func TestLoadNeedsRunJSON(t *testing.T) {
	if _, err := load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "run.json") {
		t.Errorf("load of an empty dir: %v", err)
	}
}
