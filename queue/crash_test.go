package queue

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The crash test re-runs this test binary as a child that appends and drains
// concurrently, kills it with SIGKILL at a random moment, reopens the queue,
// and checks it against what the child said before it died:
//
//	A run g i seq   Append of entry (run, g, i) returned seq: it must be there
//	C first last    the consumer is about to Ack this batch: may be gone
//
// A line is written with one write(2) after the event, so a line the parent
// sees happened; an event whose line was lost to the kill is simply unknown.
const crashChildEnv = "DROVER_QUEUE_CRASH_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(crashChildEnv) {
	case "append":
		crashChild()
		os.Exit(0)
	case "window":
		crashChild()
		os.Exit(0)
	case "cursors":
		crashChild()
		os.Exit(0)
	case "diskfull":
		diskFullChild()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func crashOptions() Options {
	// Small segments and records: many rollovers and deletions, so kills land
	// on every kind of boundary.
	return Options{ItemsPerSegment: 8, MaxRecordBytes: 8 << 10, RemovalSyncInterval: 5 * time.Millisecond}
}

// crashPayload is entry i of appender g in run r; its padding is derived
// from the name, so an invented or damaged entry cannot pass for one.
func crashPayload(r, g, i int) []byte {
	name := fmt.Sprintf("%d-%d-%d-", r, g, i)
	n := 40 + (r*7919+g*104729+i*31)%300
	b := make([]byte, 0, len(name)+n)
	b = append(b, name...)
	for k := range n {
		b = append(b, byte('a'+(r+g+i+k)%26))
	}
	return b
}

func parseCrashPayload(b []byte) (r, g, i int, ok bool) {
	parts := strings.SplitN(string(b), "-", 4)
	if len(parts) != 4 {
		return 0, 0, 0, false
	}
	r, e1 := strconv.Atoi(parts[0])
	g, e2 := strconv.Atoi(parts[1])
	i, e3 := strconv.Atoi(parts[2])
	if e1 != nil || e2 != nil || e3 != nil {
		return 0, 0, 0, false
	}
	return r, g, i, string(crashPayload(r, g, i)) == string(b)
}

func crashChild() {
	dir := os.Getenv("DROVER_QUEUE_DIR")
	run, _ := strconv.Atoi(os.Getenv("DROVER_QUEUE_RUN"))
	q, err := Open(dir, crashOptions(), nil, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child open: %v\n", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	say := func(s string) {
		mu.Lock()
		os.Stdout.Write([]byte(s))
		mu.Unlock()
	}
	say("READY\n")
	ctx := context.Background()
	for g := range 8 {
		go func() {
			for i := 0; ; i++ {
				// Some appends carry two entries: all-or-nothing records.
				p := crashPayload(run, g, i)
				if i%5 == 4 {
					p2 := crashPayload(run, g, i+1)
					seq, err := q.Append(ctx, p, p2)
					if err != nil {
						fmt.Fprintf(os.Stderr, "append: %v\n", err)
						os.Exit(4)
					}
					say(fmt.Sprintf("A %d %d %d %d\nA %d %d %d %d\n", run, g, i, seq, run, g, i+1, seq+1))
					i++
					continue
				}
				seq, err := q.Append(ctx, p)
				if err != nil {
					fmt.Fprintf(os.Stderr, "append: %v\n", err)
					os.Exit(4)
				}
				say(fmt.Sprintf("A %d %d %d %d\n", run, g, i, seq))
			}
		}()
	}
	rng := rand.New(rand.NewPCG(uint64(run), 7))
	if os.Getenv(crashChildEnv) == "cursors" {
		cursorConsumers(q, run, say)
	}
	if os.Getenv(crashChildEnv) == "window" {
		windowConsumer(q, rng, say)
	}
	for {
		b, err := q.Read(ctx, 1+rng.IntN(4096))
		if err != nil {
			fmt.Fprintf(os.Stderr, "read: %v\n", err)
			os.Exit(5)
		}
		switch rng.IntN(10) {
		case 0:
			q.Nack(b)
		case 1:
			q.Rewind()
		default:
			say(fmt.Sprintf("C %d %d\n", b.Entries[0].Seq, b.Entries[len(b.Entries)-1].Seq))
			q.Ack(b)
		}
	}
}

// windowConsumer consumes as forward's drainer does: up to 16 batches in
// flight, acked in random order, some given back (Nack) to be read again.
func windowConsumer(q *Queue, rng *rand.Rand, say func(string)) {
	var held []Batch
	for {
		did, err := windowStep(q, rng, &held, 4096, 8, func(b Batch) {
			say(fmt.Sprintf("C %d %d\n", b.Entries[0].Seq, b.Entries[len(b.Entries)-1].Seq))
			q.Ack(b)
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "read: %v\n", err)
			os.Exit(5)
		}
		if !did {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// windowStep is one step of a drainer-like consumer: two times in three,
// while fewer than 16 batches are held, it reads another; otherwise it
// settles a held batch picked at random: Nack one time in nackOneIn, else
// ack. It reports whether there was anything to do.
func windowStep(q *Queue, rng *rand.Rand, held *[]Batch, maxRead, nackOneIn int, ack func(Batch)) (bool, error) {
	if len(*held) < 16 && rng.IntN(3) != 0 {
		b, err := q.TryRead(1 + rng.IntN(maxRead))
		if err != nil {
			return false, err
		}
		if len(b.Entries) > 0 {
			*held = append(*held, b)
			return true, nil
		}
	}
	if len(*held) == 0 {
		return false, nil
	}
	i := rng.IntN(len(*held))
	b := (*held)[i]
	*held = append((*held)[:i], (*held)[i+1:]...)
	if rng.IntN(nackOneIn) == 0 {
		q.Nack(b)
	} else {
		ack(b)
	}
	return true, nil
}

func TestCrashKill9(t *testing.T) { crashKill9(t, "append") }

// TestCrashKill9Window is TestCrashKill9 with a consumer like the drainer's:
// many batches in flight, acked out of order, some given back.
func TestCrashKill9Window(t *testing.T) { crashKill9(t, "window") }

func crashKill9(t *testing.T, mode string) {
	kills := 60
	if testing.Short() {
		kills = 15
	}
	dir := t.TempDir()
	type key struct{ r, g, i int }
	mustHave := map[uint64]key{} // acked appends not yet consumed
	var consumed [][2]uint64
	lastAcked := map[[2]int]int{} // (run, g) -> highest i acked
	repairs := 0.0
	totalAcked := 0
	for run := 1; run <= kills; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+mode, "DROVER_QUEUE_DIR="+dir, "DROVER_QUEUE_RUN="+strconv.Itoa(run))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		first, ok := <-lines
		if !ok || first != "READY" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: child did not start: %q %s", run, first, stderr.String())
		}
		// Let it work for a random while, then kill it without warning.
		killAt := time.After(time.Duration(5+rand.IntN(120)) * time.Millisecond)
		var got []string
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break collect
				}
				got = append(got, l)
			case <-killAt:
				cmd.Process.Signal(syscall.SIGKILL)
				killAt = nil
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("run %d: child ended by itself (%v): %s", run, err, stderr.String())
		}
		for _, l := range got {
			f := strings.Fields(l)
			switch {
			case len(f) == 5 && f[0] == "A":
				r, _ := strconv.Atoi(f[1])
				g, _ := strconv.Atoi(f[2])
				i, _ := strconv.Atoi(f[3])
				seq, _ := strconv.ParseUint(f[4], 10, 64)
				mustHave[seq] = key{r, g, i}
				totalAcked++
				if i > lastAcked[[2]int{r, g}] {
					lastAcked[[2]int{r, g}] = i
				}
			case len(f) == 3 && f[0] == "C":
				a, _ := strconv.ParseUint(f[1], 10, 64)
				b, _ := strconv.ParseUint(f[2], 10, 64)
				consumed = append(consumed, [2]uint64{a, b})
			default:
				t.Fatalf("run %d: child said %q", run, l)
			}
		}
		for _, c := range consumed {
			for s := c[0]; s <= c[1]; s++ {
				delete(mustHave, s)
			}
		}
		consumed = consumed[:0]

		// Reopen as the next process would, and check.
		reg := prometheus.NewRegistry()
		q, err := Open(dir, crashOptions(), nil, reg)
		if err != nil {
			t.Fatalf("run %d: reopen after kill: %v", run, err)
		}
		repairs += testutil.ToFloat64(q.m.repairs.WithLabelValues(repairTornTail))
		if n := testutil.ToFloat64(q.m.quarantined); n != 0 {
			t.Fatalf("run %d: a kill -9 led to %v quarantined segments; only torn tails are expected", run, n)
		}
		entries := readAll(t, q)
		seen := map[string]bool{}
		var prevSeq uint64
		lastI := map[[2]int]int{}
		for _, e := range entries {
			if e.Seq <= prevSeq {
				t.Fatalf("run %d: seq %d after %d: out of order", run, e.Seq, prevSeq)
			}
			prevSeq = e.Seq
			r, g, i, ok := parseCrashPayload(e.Data)
			if !ok {
				t.Fatalf("run %d: entry seq %d is not one the child wrote: %q", run, e.Seq, e.Data)
			}
			if seen[string(e.Data)] {
				t.Fatalf("run %d: entry %q stored twice", run, e.Data)
			}
			seen[string(e.Data)] = true
			// Invented? Nothing beyond the appends in flight at the kill
			// (at most one record of two entries per appender).
			if max := lastAcked[[2]int{r, g}]; i > max+2 && (r == run || max > 0) {
				t.Fatalf("run %d: entry %d-%d-%d present but appender %d-%d had acked only up to %d", run, r, g, i, r, g, max)
			}
			if prev, ok := lastI[[2]int{r, g}]; ok && i <= prev {
				t.Fatalf("run %d: appender %d-%d: entry %d after %d", run, r, g, i, prev)
			}
			lastI[[2]int{r, g}] = i
			if k, ok := mustHave[e.Seq]; ok && k != (key{r, g, i}) {
				t.Fatalf("run %d: seq %d holds %d-%d-%d, the child was told %v", run, e.Seq, r, g, i, k)
			}
		}
		present := map[uint64]bool{}
		for _, e := range entries {
			present[e.Seq] = true
		}
		for seq, k := range mustHave {
			if !present[seq] {
				t.Fatalf("run %d: acked entry %d-%d-%d (seq %d) lost", run, k.r, k.g, k.i, seq)
			}
		}
		if err := q.Close(); err != nil {
			t.Fatalf("run %d: close: %v", run, err)
		}
	}
	t.Logf("%d kills, %d acked appends checked, %v torn tails repaired, %d entries held at the end", kills, totalAcked, repairs, len(mustHave))
	if totalAcked == 0 {
		t.Fatal("the child never got an append acked: the test tested nothing")
	}
}
