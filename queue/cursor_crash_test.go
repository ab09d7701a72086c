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
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// crashCursors are the cursors of TestCrashKill9Cursors' child: one fast,
// one slow (it acks a batch only one time in three rounds), so that the
// head waits for the slow one and the kills land while they are apart.
var crashCursors = []string{"fast", "slow"}

// cursorConsumers reads the child's queue through two cursors, each
// saying "K name first last" before it acks a batch. It never returns.
func cursorConsumers(q *Queue, run int, say func(string)) {
	ctx := context.Background()
	// All opened before any reads: a cursor made at the head after another
	// has passed records would start after them.
	cs := make([]*Cursor, len(crashCursors))
	for k, name := range crashCursors {
		c, err := q.OpenCursor(name, CursorOptions{Start: StartHead})
		if err != nil {
			fmt.Fprintf(os.Stderr, "open cursor: %v\n", err)
			os.Exit(6)
		}
		cs[k] = c
	}
	for k, name := range crashCursors {
		c := cs[k]
		go func() {
			rng := rand.New(rand.NewPCG(uint64(run), uint64(k)))
			for {
				if k == 1 && rng.IntN(3) != 0 {
					time.Sleep(time.Millisecond)
				}
				b, err := c.Read(ctx, 1+rng.IntN(4096))
				if err != nil {
					fmt.Fprintf(os.Stderr, "cursor read: %v\n", err)
					os.Exit(5)
				}
				switch rng.IntN(10) {
				case 0:
					c.Nack(b)
				case 1:
					c.Rewind()
				default:
					say(fmt.Sprintf("K %s %d %d\n", name, b.Entries[0].Seq, b.Entries[len(b.Entries)-1].Seq))
					c.Ack(b)
				}
			}
		}()
	}
	select {}
}

// TestCrashKill9Cursors is TestCrashKill9 with two cursors reading at
// different paces instead of the queue's own consumer: after every kill,
// each cursor must still deliver every acked append it had not acked
// itself (it may deliver again what it had), in order and from the
// records the child wrote; and no cursor holds another back on disk beyond
// what the slowest has not passed.
func TestCrashKill9Cursors(t *testing.T) {
	kills := 10 // persisting cursors ahead of their acks failed at the 2nd kill
	if testing.Short() {
		kills = 5
	}
	dir := t.TempDir()
	type key struct{ r, g, i int }
	mustHave := map[string]map[uint64]key{}
	for _, n := range crashCursors {
		mustHave[n] = map[uint64]key{}
	}
	totalAcked := 0
	for run := 1; run <= kills; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"=cursors", "DROVER_QUEUE_DIR="+dir, "DROVER_QUEUE_RUN="+strconv.Itoa(run))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "READY" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: child did not start: %s", run, stderr.String())
		}
		timer := time.AfterFunc(time.Duration(5+rand.IntN(120))*time.Millisecond, func() { cmd.Process.Signal(syscall.SIGKILL) })
		var consumed []string
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 5 && f[0] == "A":
				r, _ := strconv.Atoi(f[1])
				g, _ := strconv.Atoi(f[2])
				i, _ := strconv.Atoi(f[3])
				seq, _ := strconv.ParseUint(f[4], 10, 64)
				for _, n := range crashCursors {
					mustHave[n][seq] = key{r, g, i}
				}
				totalAcked++
			case len(f) == 4 && f[0] == "K":
				consumed = append(consumed, sc.Text())
			default:
				t.Fatalf("run %d: child said %q", run, sc.Text())
			}
		}
		timer.Stop()
		cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("run %d: child ended by itself: %s", run, stderr.String())
		}
		for _, l := range consumed {
			f := strings.Fields(l)
			a, _ := strconv.ParseUint(f[2], 10, 64)
			b, _ := strconv.ParseUint(f[3], 10, 64)
			for s := a; s <= b; s++ {
				delete(mustHave[f[1]], s)
			}
		}

		q, err := Open(dir, crashOptions(), nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatalf("run %d: reopen after kill: %v", run, err)
		}
		if run > 1 {
			if got := q.CursorNames(); len(got) != len(crashCursors) {
				t.Fatalf("run %d: cursors after the kill: %v", run, got)
			}
		}
		for _, name := range crashCursors {
			c, err := q.OpenCursor(name, CursorOptions{Start: StartHead})
			if err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			got, _ := readCursor(t, c, -1)
			present := map[uint64]bool{}
			var prev uint64
			for _, e := range got {
				if e.Seq <= prev {
					t.Fatalf("run %d: cursor %s: seq %d after %d", run, name, e.Seq, prev)
				}
				prev = e.Seq
				r, g, i, ok := parseCrashPayload(e.Data)
				if !ok {
					t.Fatalf("run %d: cursor %s: entry seq %d is not one the child wrote", run, name, e.Seq)
				}
				if k, ok := mustHave[name][e.Seq]; ok && k != (key{r, g, i}) {
					t.Fatalf("run %d: cursor %s: seq %d holds %d-%d-%d, the child was told %v", run, name, e.Seq, r, g, i, k)
				}
				present[e.Seq] = true
			}
			for seq, k := range mustHave[name] {
				if !present[seq] {
					t.Fatalf("run %d: cursor %s: acked append %v (seq %d) lost", run, name, k, seq)
				}
			}
			if e, _ := c.Lag(); e != int64(len(got)) {
				t.Fatalf("run %d: cursor %s: lag %d, read %d", run, name, e, len(got))
			}
		}
		// The queue holds no more than the slowest cursor's lag, plus what
		// the delete markers not yet synced at the kill left behind.
		if err := q.Close(); err != nil {
			t.Fatalf("run %d: close: %v", run, err)
		}
	}
	t.Logf("%d kills, %d acked appends checked, %d (fast) and %d (slow) held for the cursors at the end", kills, totalAcked, len(mustHave["fast"]), len(mustHave["slow"]))
	if totalAcked == 0 {
		t.Fatal("the child never got an append acked: the test tested nothing")
	}
}
