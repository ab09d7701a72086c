package lake

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// crasher is a failpoint hook that "kills" the goroutine that reaches its
// point: it signals reached, waits for release (so the test can look at the
// disk as a crash would leave it, and start another sink on it), then ends
// the goroutine with runtime.Goexit, so that nothing after the point runs.
type crasher struct {
	point   string
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func newCrasher(point string) *crasher {
	return &crasher{point: point, reached: make(chan struct{}), release: make(chan struct{})}
}

func (c *crasher) hook(point string) {
	if point != c.point {
		return
	}
	fired := false
	c.once.Do(func() { fired = true })
	if !fired {
		return
	}
	close(c.reached)
	<-c.release
	runtime.Goexit()
}

// run calls f in a goroutine that the crasher may end; the returned
// function releases it and waits for the goroutine to be gone, and reports
// whether f returned (it must not, if the point was reached).
func (c *crasher) run(f func()) (finish func() (returned bool)) {
	done := make(chan struct{})
	var returned bool
	go func() {
		defer close(done)
		f()
		returned = true
	}()
	return func() bool {
		close(c.release)
		<-done
		return returned
	}
}

// A crash at each point of a Write's durability path leaves either no
// visible file or a complete one, never a half file; a restart removes what
// was being built, and the writer's retry makes every record readable
// exactly once after deduplication.
func TestCrashFailpoints(t *testing.T) {
	cases := []struct {
		point    string
		visible  bool // the file is in the lake when the crash happens
		leftover bool // the file being built is left in scratch
	}{
		{fpBeforeSync, false, true},
		{fpBeforeRename, false, true},
		{fpAfterRename, true, false},
	}
	for _, c := range cases {
		t.Run(c.point, func(t *testing.T) {
			cfg := testConfig(t)
			crash := newCrasher(c.point)
			s1, err := newSink(cfg, nil, nil, crash.hook, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			recs := makeRecords(500, 5, baseTime, time.Second, 1)
			finish := crash.run(func() { s1.Write(context.Background(), recs) })
			<-crash.reached

			// The process is dead at the point. readLake fails on any
			// visible file that is not a complete Parquet file.
			files := readLake(t, cfg.Dir)
			if c.visible {
				if len(files) != 1 {
					t.Fatalf("%d files visible, want 1", len(files))
				}
				sameRows(t, allRows(files), expectedRows(t, recs))
			} else if len(files) != 0 {
				t.Fatalf("%d files visible before the rename", len(files))
			}
			if left := scratchEntries(t, cfg); (len(left) > 0) != c.leftover {
				t.Fatalf("scratch holds %v", left)
			}

			// Restart: leftovers go, and the writer retries the batch it
			// never saw acknowledged.
			s2 := newTestSink(t, cfg)
			if left := scratchEntries(t, cfg); len(left) != 0 {
				t.Fatalf("restart left %v in scratch", left)
			}
			if err := s2.Write(context.Background(), recs); err != nil {
				t.Fatal(err)
			}
			sameRows(t, dedupe(allRows(readLake(t, cfg.Dir))), expectedRows(t, recs))
			if finish() {
				t.Fatal("Write returned past the crash point")
			}
		})
	}
}

// A crash in the middle of a compaction is finished (all outputs published:
// the inputs go) or undone (the published outputs go) by the next pass: the
// lake never keeps a row twice, nor loses one.
func TestCrashCompaction(t *testing.T) {
	for _, point := range []string{fpJournaled, fpBeforeRemove} {
		t.Run(point, func(t *testing.T) {
			cfg := testConfig(t)
			now := func() time.Time { return baseTime.Add(3 * time.Hour) } // the hour is closed
			crash := newCrasher(point)
			s1, err := newSink(cfg, nil, nil, crash.hook, now)
			if err != nil {
				t.Fatal(err)
			}
			var recs []*telemetry.EnrichedRecord
			for i := range 4 {
				b := makeRecords(300, 3, baseTime, time.Second, uint64(1+1000*i))
				if err := s1.Write(context.Background(), b); err != nil {
					t.Fatal(err)
				}
				recs = append(recs, b...)
			}
			finish := crash.run(func() { s1.Compact(context.Background()) })
			<-crash.reached

			rows := allRows(readLake(t, cfg.Dir))
			switch point {
			case fpJournaled:
				if len(rows) != len(recs) {
					t.Fatalf("%d rows visible before any output was published, want %d", len(rows), len(recs))
				}
			case fpBeforeRemove:
				if len(rows) != 2*len(recs) {
					t.Fatalf("%d rows visible with outputs and inputs, want %d", len(rows), 2*len(recs))
				}
			}

			s2, err := newSink(cfg, nil, nil, nil, now)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close(context.Background())
			if err := s2.Compact(context.Background()); err != nil {
				t.Fatal(err)
			}
			files := readLake(t, cfg.Dir)
			if len(files) != 1 {
				t.Errorf("%d files after recovery and compaction, want 1", len(files))
			}
			sameRows(t, allRows(files), expectedRows(t, recs)) // each row once
			if entries, _ := os.ReadDir(s2.journalFolder()); len(entries) != 0 {
				t.Errorf("journals left: %v", entries)
			}
			if finish() {
				t.Fatal("Compact returned past the crash point")
			}
		})
	}
}

// The child of TestCrashKill9: writes batches and compacts until killed,
// printing "acked N" after each batch N that Write confirmed.
func TestCrashKill9Child(t *testing.T) {
	dir := os.Getenv("DROVER_LAKE_CRASH_DIR")
	if dir == "" {
		t.Skip("run by TestCrashKill9")
	}
	cfg := crashChildConfig(dir)
	s, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := strconv.Atoi(os.Getenv("DROVER_LAKE_CRASH_FIRST"))
	out := bufio.NewWriter(os.Stdout)
	for n := start; ; n++ {
		if err := s.Write(context.Background(), crashBatch(n)); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(out, "acked %d\n", n)
		out.Flush()
	}
}

func crashChildConfig(dir string) Config {
	cfg := DefaultConfig()
	cfg.Dir = dir
	cfg.Name = "crash"
	cfg.CompactInterval = 5 * time.Millisecond
	cfg.CompactMinFiles = 2
	cfg.TargetFileSize = 1 << 20
	return cfg
}

// crashBatch is batch n of the kill -9 test: 400 records of 4 devices, in
// a closed hour (so that compaction merges everything, again and again)
// and in the current hour (merged by count).
func crashBatch(n int) []*telemetry.EnrichedRecord {
	recs := makeRecords(200, 4, baseTime.Add(time.Duration(n)*time.Second), time.Millisecond, uint64(1+n*100))
	return append(recs, makeRecords(200, 4, time.Now(), time.Millisecond, uint64(1_000_000+n*100))...)
}

// kill -9 at random moments while Write and compaction run: every batch
// ever acknowledged is in the lake, every visible file is complete, each
// row is there once (compaction never leaves duplicates behind), and a
// restart cleans the scratch folder.
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	next := 0
	var ackedBatches []int
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill9Child$", "-test.count=1")
		cmd.Env = append(os.Environ(), "DROVER_LAKE_CRASH_DIR="+dir, "DROVER_LAKE_CRASH_FIRST="+strconv.Itoa(next))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := -1
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let it ack a few batches, then kill it somewhere in the next ones.
		wantAcks := 3 + rng.IntN(10)
		killAt := time.Duration(rng.IntN(30)) * time.Millisecond
		timeout := time.After(20 * time.Second)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: child exited early", round)
				}
				if n, ok := strings.CutPrefix(l, "acked "); ok {
					acked, _ = strconv.Atoi(n)
					if acked-next+1 >= wantAcks {
						break wait
					}
				}
			case <-timeout:
				t.Fatalf("round %d: child acked nothing in 20s", round)
			}
		}
		time.Sleep(killAt) // a random moment, not a condition to wait for
		cmd.Process.Kill()
		for l := range lines {
			if n, ok := strings.CutPrefix(l, "acked "); ok {
				acked, _ = strconv.Atoi(n)
			}
		}
		cmd.Wait()

		// Restart as the writer would, then check.
		s, err := New(crashChildConfig(dir), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if left := scratchEntries(t, crashChildConfig(dir)); len(left) != 0 {
			t.Fatalf("round %d: scratch holds %v after restart", round, left)
		}
		if err := s.Compact(context.Background()); err != nil {
			t.Fatalf("round %d: compact after restart: %v", round, err)
		}
		s.Close(context.Background())
		rows := allRows(readLake(t, dir))
		if d := dedupe(rows); len(d) != len(rows) {
			t.Fatalf("round %d: %d duplicate rows after recovery", round, len(rows)-len(d))
		}
		have := make(map[string]bool, len(rows))
		for _, r := range rows {
			have[fmt.Sprintf("%s/%d", r.DeviceID, r.Seq)] = true
		}
		for n := next; n <= acked; n++ {
			ackedBatches = append(ackedBatches, n)
		}
		for _, n := range ackedBatches {
			for _, r := range crashBatch(n) {
				if k := fmt.Sprintf("%s/%d", r.Record.DeviceId, r.Record.Reading.Seq); !have[k] {
					t.Fatalf("round %d: acked record %s of batch %d missing", round, k, n)
				}
			}
		}
		t.Logf("round %d: %d batches acked, %d rows, killed %v after ack %d", round, acked+1, len(rows), killAt, acked)
		// The next child writes new batches: an unacked batch is simply
		// never retried here (its rows may or may not be present).
		next = acked + 2
	}
}
