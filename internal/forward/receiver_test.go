package forward

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/queue"
)

// answers collects what a Receiver sends back, as a link would.
type answers struct {
	mu  sync.Mutex
	got []Message
}

func (a *answers) send(m Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, m)
}

// wait returns the answers once there are n.
func (a *answers) wait(t *testing.T, n int) []Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.mu.Lock()
		got := append([]Message(nil), a.got...)
		a.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d answers, want %d: %+v", len(got), n, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newTestReceiver opens a queue of records of recordBytes and a receiver
// on it that prefixes each entry with its router's name.
func newTestReceiver(t *testing.T, recordBytes int, cfg ReceiverConfig) (*Receiver, *queue.Queue) {
	t.Helper()
	q, err := queue.Open(t.TempDir(), queue.Options{Name: "recv", MaxRecordBytes: recordBytes}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Queue = func() *queue.Queue { return q }
	cfg.Entry = func(e []byte, router string) []byte { return append([]byte(router+"/"), e...) }
	cfg.ChunkBytes = func(*queue.Queue) int { return recordBytes - 1024 }
	cfg.DedupIntervals = 64
	if cfg.MaxAppends == 0 {
		cfg.MaxAppends = 8
	}
	r := NewReceiver(cfg)
	t.Cleanup(func() {
		r.Stop(0)
		q.Close()
	})
	return r, q
}

// stored is what q holds, in its order.
func stored(t *testing.T, q *queue.Queue) []string {
	t.Helper()
	var got []string
	if err := q.Scan(context.Background(), func(e queue.Entry) error {
		got = append(got, string(e.Data))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func batch(router string, first, last uint64) Message {
	m := Message{Type: TypeBatch, Sender: router, First: first, Last: last}
	for seq := first; seq <= last; seq++ {
		m.Entries = append(m.Entries, []byte(fmt.Sprint(seq)))
	}
	return m
}

// TestReceiverOrderAndDedup: batches of two routers, received at once,
// enter the queue in each router's order, each entry once though the
// batches overlap; nothing is answered busy; a batch received again once
// stored is acked at once; what came before is counted as duplicates.
func TestReceiverOrderAndDedup(t *testing.T) {
	var dups, appended atomic.Int64
	r, q := newTestReceiver(t, 64<<10, ReceiverConfig{Name: "test", MaxAppends: 128,
		Duplicates: func(n int) { dups.Add(int64(n)) }, Appended: func(n int) { appended.Add(int64(n)) }})
	var a answers
	for _, m := range []Message{batch("a", 1, 3), batch("b", 1, 2), batch("a", 4, 6), batch("a", 2, 8), batch("b", 3, 3)} {
		r.Receive(a.send, m)
	}
	const singles = 60 // router c: one-entry batches, many appends under way at once
	for seq := uint64(1); seq <= singles; seq++ {
		r.Receive(a.send, batch("c", seq, seq))
	}
	deadline := time.Now().Add(10 * time.Second)
	for !r.Appended("a", 1, 8) || !r.Appended("b", 1, 3) || !r.Appended("c", 1, singles) {
		if time.Now().After(deadline) {
			t.Fatalf("not everything appended: the queue holds %q", stored(t, q))
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.Stop(0)
	// An overlapping batch whose appends finished before the batches it
	// overlaps were done is not acked (its router resends it); none is
	// refused.
	for _, m := range a.wait(t, 0) {
		if m.Type != TypeAck {
			t.Errorf("answer %+v, want acks only", m)
		}
	}
	if r.Appended("b", 1, 4) {
		t.Error("Appended(b, 1..4): true, want false")
	}
	before := len(a.wait(t, 0))
	r.Receive(a.send, batch("a", 1, 8)) // all stored: acked at once, nothing appended
	if got := a.wait(t, before+1)[before]; got.Type != TypeAck || got.First != 1 || got.Last != 8 {
		t.Errorf("the resend's answer %+v, want ack 1..8", got)
	}
	var as, bs []string
	var cs []uint64
	for _, e := range stored(t, q) {
		switch router, seq, _ := strings.Cut(e, "/"); router {
		case "a":
			as = append(as, seq)
		case "b":
			bs = append(bs, seq)
		default:
			n, _ := strconv.ParseUint(seq, 10, 64)
			cs = append(cs, n)
		}
	}
	if len(cs) != singles || !slices.IsSorted(cs) {
		t.Errorf("router c's entries entered the queue as %v, want 1..%d in order", cs, singles)
	}
	if want := "1 2 3 4 5 6 7 8"; strings.Join(as, " ") != want {
		t.Errorf("router a's entries in the queue: %v, want %s", as, want)
	}
	if want := "1 2 3"; strings.Join(bs, " ") != want {
		t.Errorf("router b's entries in the queue: %v, want %s", bs, want)
	}
	// 2..6 of a 2..8 came before it (stored or being stored), and all of
	// the resend.
	if appended.Load() != 11+singles || dups.Load() != 5+8 {
		t.Errorf("appended %d, duplicates %d; want %d, 13", appended.Load(), dups.Load(), 11+singles)
	}
}

// TestReceiverBusy: a batch that finds MaxAppends appends under way is
// answered busy at once, saying why, and the subscriber is told.
func TestReceiverBusy(t *testing.T) {
	var busyErr error
	r, q := newTestReceiver(t, 64<<10, ReceiverConfig{Name: "test",
		Busy: func(_ Message, err error, _ [][]byte) { busyErr = err }})
	r.sem = make(chan struct{}) // no slot: every append is one too many
	var a answers
	r.Receive(a.send, batch("a", 1, 2))
	got := a.wait(t, 1)
	if got[0].Type != TypeBusy || got[0].First != 1 || got[0].Last != 2 || got[0].Reason != "test: too many appends in flight" {
		t.Errorf("answer %+v, want busy 1..2 for too many appends", got[0])
	}
	if !errors.Is(busyErr, ErrTooManyAppends) {
		t.Errorf("Busy told %v, want ErrTooManyAppends", busyErr)
	}
	if s := stored(t, q); len(s) != 0 {
		t.Errorf("the queue holds %v, want nothing", s)
	}
}

// TestReceiverTooLarge: an entry larger than a queue record goes to
// TooLarge; when it disposes of it the batch is acked and the rest
// stored, and without TooLarge the batch is answered busy.
func TestReceiverTooLarge(t *testing.T) {
	big := batch("a", 1, 3)
	big.Entries[1] = make([]byte, 8<<10)
	var took []uint64
	r, q := newTestReceiver(t, 4<<10, ReceiverConfig{Name: "test",
		TooLarge: func(m Message, seq uint64, _ []byte, err error) error {
			if !errors.Is(err, queue.ErrTooLarge) {
				t.Errorf("TooLarge with %v", err)
			}
			took = append(took, seq)
			return nil
		}})
	var a answers
	r.Receive(a.send, big)
	if got := a.wait(t, 1); got[0].Type != TypeAck {
		t.Errorf("answer %+v, want an ack", got[0])
	}
	if len(took) != 1 || took[0] != 2 {
		t.Errorf("TooLarge took %v, want [2]", took)
	}
	if s := stored(t, q); len(s) != 2 || s[0] != "a/1" || s[1] != "a/3" {
		t.Errorf("the queue holds %q, want a/1 and a/3", s)
	}

	var busyErr error
	r2, _ := newTestReceiver(t, 4<<10, ReceiverConfig{Name: "test", Busy: func(_ Message, err error, _ [][]byte) { busyErr = err }})
	var a2 answers
	r2.Receive(a2.send, big)
	if got := a2.wait(t, 1); got[0].Type != TypeBusy {
		t.Errorf("without TooLarge: answer %+v, want busy", got[0])
	}
	if !errors.Is(busyErr, queue.ErrTooLarge) {
		t.Errorf("without TooLarge: Busy told %v, want ErrTooLarge", busyErr)
	}
}

// TestReceiverStopAbandons: Stop waits for the appends under way, and after
// its grace abandons those still waiting: their batches are answered busy
// and nothing of them is stored. An idle receiver stops at once.
func TestReceiverStopAbandons(t *testing.T) {
	r, q := newTestReceiver(t, 64<<10, ReceiverConfig{Name: "test"})
	// A batch whose router's previous batch never takes its place: its
	// append waits for that turn until it is abandoned.
	r.mu.Lock()
	r.routers["a"] = &routerSeqs{done: NewSeqSet(64), last: queue.NewTurn()}
	r.mu.Unlock()
	var a answers
	r.Receive(a.send, batch("a", 1, 2))
	if !r.Stop(50 * time.Millisecond) {
		t.Fatal("Stop: nothing abandoned, want the waiting append")
	}
	if got := a.wait(t, 1); got[0].Type != TypeBusy || !strings.Contains(got[0].Reason, "stopping") {
		t.Errorf("the abandoned batch's answer %+v, want busy, stopping", got[0])
	}
	if s := stored(t, q); len(s) != 0 {
		t.Errorf("the queue holds %q, want nothing", s)
	}
	r2, _ := newTestReceiver(t, 64<<10, ReceiverConfig{Name: "test"})
	if r2.Stop(time.Millisecond) {
		t.Error("an idle receiver's Stop abandoned something")
	}
}
