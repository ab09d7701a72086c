// Command fsynctail measures the tail of append+fsync on a disk: each of -streams goroutines
// appends -size bytes to its own file and fsyncs it, in a loop, for -duration, and the
// distribution of those times is printed. It is what docs/performance.md's fsync table comes
// from: one stream on a quiet machine, two streams at once (a frontend's and a router's queue on
// one disk), and one stream while other processes keep the cores busy.
//
//	go run ./internal/bench/fsynctail -dir . -streams 1 -duration 20s
//	go run ./internal/bench/fsynctail -dir . -streams 2 -duration 20s
//	(sh -c 'while :; do :; done' & sh -c 'while :; do :; done' & go run ./internal/bench/fsynctail -dir .; kill %1 %2)
//
// -datasync uses fdatasync(2) instead of fsync(2), and -prealloc allocates the file first and
// overwrites it (so the size never changes), the two variants docs/performance.md tried for the
// queue. Build it first (go build -o /tmp/fsynctail ./internal/bench/fsynctail) when the
// compiler's own work must not overlap the measurement. The files are removed at the end.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// opts are the flags of one measurement.
type opts struct {
	size     int
	datasync bool
	prealloc bool
}

func main() {
	dir := flag.String("dir", ".", "`directory` on the disk to measure")
	streams := flag.Int("streams", 1, "concurrent append+fsync loops, each on its own file (`number`)")
	size := flag.Int("size", 8<<10, "`bytes` appended before each fsync")
	duration := flag.Duration("duration", 20*time.Second, "how long to measure (`duration`)")
	datasync := flag.Bool("datasync", false, "fdatasync(2) instead of fsync(2)")
	prealloc := flag.Bool("prealloc", false, "allocate the file (1 GiB) first and overwrite it, so its size never changes")
	flag.Parse()
	if err := run(*dir, *streams, *duration, opts{size: *size, datasync: *datasync, prealloc: *prealloc}); err != nil {
		fmt.Fprintln(os.Stderr, "fsynctail:", err)
		os.Exit(1)
	}
}

func run(dir string, streams int, duration time.Duration, o opts) error {
	if streams < 1 || o.size < 1 || duration <= 0 {
		return fmt.Errorf("streams %d, size %d, duration %s: want positive values", streams, o.size, duration)
	}
	results := make([][]time.Duration, streams)
	errs := make([]error, streams)
	end := time.Now().Add(duration)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() {
			results[i], errs[i] = loop(filepath.Join(dir, fmt.Sprintf(".fsynctail-%d-%d", os.Getpid(), i)), end, o)
		})
	}
	wg.Wait()
	for i, d := range results {
		if errs[i] != nil {
			return errs[i]
		}
		fmt.Printf("stream %d: %s\n", i, summary(d, duration))
	}
	return nil
}

// loop appends and syncs until end, and returns how long each append+sync took.
func loop(path string, end time.Time, o opts) ([]time.Duration, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer os.Remove(path)
	defer f.Close()
	if o.prealloc {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, 1<<30); err != nil {
			return nil, fmt.Errorf("fallocate %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("fsync %s: %w", path, err)
		}
	}
	flush := f.Sync
	if o.datasync {
		flush = func() error { return syscall.Fdatasync(int(f.Fd())) }
	}
	buf := make([]byte, o.size)
	var d []time.Duration
	for time.Now().Before(end) {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		if err := flush(); err != nil {
			return nil, fmt.Errorf("sync %s: %w", path, err)
		}
		d = append(d, time.Since(t))
	}
	return d, nil
}

// summary gives the rate over elapsed, the percentiles, the maximum and the
// share over 5 ms of d.
func summary(d []time.Duration, elapsed time.Duration) string {
	if len(d) == 0 {
		return "no sync completed"
	}
	slices.Sort(d)
	q := func(p float64) time.Duration { return d[int(p*float64(len(d)-1))] }
	slow := 0
	for _, x := range d {
		if x > 5*time.Millisecond {
			slow++
		}
	}
	return fmt.Sprintf("%d syncs (%.0f/s) mean %v p50 %v p90 %v p99 %v p99.9 %v max %v; over 5 ms: %.2f%%",
		len(d), float64(len(d))/elapsed.Seconds(), mean(d), q(.5), q(.9), q(.99), q(.999), d[len(d)-1],
		100*float64(slow)/float64(len(d)))
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}
