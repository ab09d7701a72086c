package frontend

import (
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestGateGivesEachRefusedDeviceItsPlace checks the accept rate's formula:
// with 10 connections a second and a burst of 2, a herd of 42 arriving at
// once lets 2 in and tells the k-th refused to come back after k ÷ 10 s,
// so that the herd spreads over 4 s; a refused device that comes back at
// its time is let in without competing again, one that comes too early is
// told the same time, and places not taken expire.
func TestGateGivesEachRefusedDeviceItsPlace(t *testing.T) {
	g := newGate(10, 2, 1000)
	t0 := time.Unix(1_000_000, 0)
	waits := map[string]time.Duration{}
	admitted := 0
	for i := range 42 {
		id := deviceID(i)
		ok, wait := g.admit(id, t0)
		if ok {
			admitted++
			continue
		}
		waits[id] = wait
	}
	if admitted != 2 {
		t.Fatalf("admitted %d of the herd at once, want the burst (2)", admitted)
	}
	// Refused in arrival order: device i (i ≥ 2) has place k = i-1 and
	// waits k ÷ 10 s.
	for i := 2; i < 42; i++ {
		k := i - 1
		want := time.Duration(k) * time.Second / 10
		if got := waits[deviceID(i)]; got != want {
			t.Fatalf("device %d (place %d): wait %v, want %v", i, k, got, want)
		}
	}
	if g.reservations() != 40 {
		t.Fatalf("%d places held, want 40", g.reservations())
	}
	// The Retry-After header: whole seconds rounded up, so the herd comes
	// back at 1, 2, 3 and 4 s, ten a second (the device adds up to a
	// second of its own jitter).
	perSecond := map[int]int{}
	for _, w := range waits {
		perSecond[retrySeconds(w)]++
	}
	if !maps4(perSecond) {
		t.Fatalf("Retry-After per second %v, want 10 devices at each of 1, 2, 3, 4 s", perSecond)
	}

	// Device 21 (place 20, due at 2 s) comes back early: the same place.
	if ok, wait := g.admit(deviceID(21), t0.Add(500*time.Millisecond)); ok || wait != 1500*time.Millisecond {
		t.Fatalf("early return: ok=%v wait=%v, want refused with 1.5s left of the same place", ok, wait)
	}
	// At its time (plus its jitter) it is let in, though others are in line.
	if ok, _ := g.admit(deviceID(21), t0.Add(2300*time.Millisecond)); !ok {
		t.Fatal("a device coming back at its place was refused")
	}
	// A newcomer at that moment queues behind the whole herd.
	if ok, wait := g.admit("newcomer", t0.Add(2300*time.Millisecond)); ok || wait < 1700*time.Millisecond {
		t.Fatalf("newcomer: ok=%v wait=%v, want a place after the herd (4.1 s from the start)", ok, wait)
	}
	// Places not taken within their grace are forgotten.
	g.admit("late", t0.Add(time.Minute))
	if n := g.reservations(); n != 0 {
		t.Fatalf("%d places still held a minute later, want none", n)
	}
	// No rate: everyone in.
	g.setRate(0)
	for i := range 100 {
		if ok, _ := g.admit(deviceID(i), t0.Add(time.Minute)); !ok {
			t.Fatal("refused with no rate")
		}
	}
}

func maps4(m map[int]int) bool {
	return len(m) == 4 && m[1] == 10 && m[2] == 10 && m[3] == 10 && m[4] == 10
}

// TestAdmissionRefusesBeforeAuthentication runs a herd against a frontend
// with an accept rate of 5 a second: the refused get 503 with a
// Retry-After that follows their place in line, before any token check (a
// device with a wrong token is answered 503, not 401), counted; one that
// comes back when told is let in.
func TestAdmissionRefusesBeforeAuthentication(t *testing.T) {
	e := startWith(t, 30, func(c *Config) {
		c.Admission.Rate, c.Admission.Burst, c.Admission.MinRate = 5, 2, 1
	})
	type answer struct {
		i      int
		status int
		retry  int
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
	)
	for i := range 30 {
		wg.Go(func() {
			token := tokenOf(i)
			if i%3 == 0 {
				token = "wrong"
			}
			ws, resp, err := e.dial(i, token, false)
			a := answer{i: i}
			switch {
			case err == nil:
				a.status = http.StatusSwitchingProtocols
				ws.Close()
			case resp != nil:
				a.status = resp.StatusCode
				a.retry, _ = strconv.Atoi(resp.Header.Get("Retry-After"))
			}
			mu.Lock()
			answers = append(answers, a)
			mu.Unlock()
		})
	}
	wg.Wait()
	var retries []int
	refusedBadToken := 0
	for _, a := range answers {
		switch a.status {
		case http.StatusServiceUnavailable:
			retries = append(retries, a.retry)
			if a.i%3 == 0 {
				refusedBadToken++
			}
		case http.StatusSwitchingProtocols, http.StatusUnauthorized:
		default:
			t.Fatalf("device %d: status %d", a.i, a.status)
		}
	}
	// The herd of 30 took a few ms to arrive: 2 (the burst) and perhaps
	// one more got in; the other ~28 are spread over ~28 ÷ 5 s.
	if len(retries) < 25 {
		t.Fatalf("%d refused of 30, want at least 25 (rate 5/s, burst 2)", len(retries))
	}
	if refusedBadToken == 0 {
		t.Error("no device with a wrong token was refused 503: admission must come before the token check")
	}
	slices.Sort(retries)
	// Place k (1..n) waits k/5 s: Retry-After ⌈k/5⌉, so each value from 1
	// to ⌈n/5⌉ is given to at most 5 devices, and the last is about n/5.
	counts := map[int]int{}
	for _, r := range retries {
		counts[r]++
	}
	last := retries[len(retries)-1]
	if want := int(math.Ceil(float64(len(retries)) / 5)); last < want-1 || last > want+1 {
		t.Errorf("longest Retry-After %d s for %d refused at 5/s, want about %d", last, len(retries), want)
	}
	for s, n := range counts {
		if n > 6 || s < 1 {
			t.Errorf("Retry-After %d given %d times (%v): want at most 5 a second of line", s, n, counts)
		}
	}
	if got := e.refusals(reasonAcceptRate); got != float64(len(retries)) {
		t.Errorf("refusals{accept_rate} %v, want %d", got, len(retries))
	}
	if got := e.refusals(reasonBadToken); got > 10 {
		t.Errorf("refusals{bad_token} %v: more than the 10 wrong tokens", got)
	}

	// A refused device that honours its Retry-After is let in.
	var back answer
	for _, a := range answers {
		if a.status == http.StatusServiceUnavailable && a.i%3 != 0 && a.retry <= 2 {
			back = a
			break
		}
	}
	if back.retry == 0 {
		t.Fatalf("no refused device with a good token and a short Retry-After among %v", answers)
	}
	time.Sleep(time.Duration(back.retry) * time.Second)
	ws, resp, err := e.dial(back.i, tokenOf(back.i), false)
	if err != nil {
		t.Fatalf("device %d back after its Retry-After of %d s: %v (%v)", back.i, back.retry, err, resp)
	}
	ws.Close()
}

// TestFlappingDeviceIsHeldBack reconnects one device past the flapping
// limit: it is held back with 429 and a Retry-After of the hold, counted;
// another device is not.
func TestFlappingDeviceIsHeldBack(t *testing.T) {
	e := startWith(t, 2, func(c *Config) {
		c.Admission.FlapConnects, c.Admission.FlapWindow = 3, time.Minute
		c.Admission.FlapBlock, c.Admission.FlapMaxBlock = 20*time.Second, time.Minute
	})
	// Four connections in a row: the fourth is the one past the limit; it
	// is served (the hold is for the next ones).
	for range 4 {
		ws := e.connect(t, 0, false)
		ws.Close()
	}
	_, resp, err := e.dial(0, tokenOf(0), false)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the fifth connection: %v (%v), want 429", err, resp)
	}
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 19 || ra > 20 {
		t.Errorf("Retry-After %q, want the 20 s hold", resp.Header.Get("Retry-After"))
	}
	if got := e.refusals(reasonFlapping); got != 1 {
		t.Errorf("refusals{flapping} %v, want 1", got)
	}
	if got := e.gathered(t, "drover_frontend_flapping_holds_total", "", ""); got != 1 {
		t.Errorf("flapping holds %v, want 1", got)
	}
	// Another device is not held back.
	ws := e.connect(t, 1, false)
	ack(t, ws, false, readings(time.Now(), 1), 1)
}

// TestGovernorFollowsSchedulerDelay drives the governor with made-up
// scheduler delays: above the target the rate falls by 30% a step to the
// floor; below half the target it grows back 5% of the rate a step; in
// between it holds. The rate reaches the gate and the TLS budget.
func TestGovernorFollowsSchedulerDelay(t *testing.T) {
	var applied []float64
	g := newGovernor(AdmissionConfig{Rate: 1000, MinRate: 100, DelayTarget: 10 * time.Millisecond},
		func(r float64) { applied = append(applied, r) })
	g.step(50*time.Millisecond, true)
	g.step(20*time.Millisecond, true)
	if len(applied) != 2 || math.Abs(applied[0]-700) > 1e-6 || math.Abs(applied[1]-490) > 1e-6 {
		t.Fatalf("rates %v after two slow steps, want [700 490]", applied)
	}
	for range 10 {
		g.step(time.Second, true)
	}
	if g.cur != 100 {
		t.Fatalf("rate %v after a long overload, want the floor 100", g.cur)
	}
	n := len(applied)
	g.step(7*time.Millisecond, true) // between half the target and the target: hold
	if len(applied) != n {
		t.Fatalf("rate changed at 7 ms (target 10 ms): %v", applied[n:])
	}
	g.step(time.Millisecond, true)
	if g.cur != 150 {
		t.Fatalf("rate %v after a calm step, want 150 (+5%% of 1000)", g.cur)
	}
	for range 30 {
		g.step(0, false) // no sample: an idle process
	}
	if g.cur != 1000 {
		t.Fatalf("rate %v after calm, want back to 1000", g.cur)
	}

	// In a frontend, the rate reaches the gate and the metric.
	newDelaySignal = func() func() (time.Duration, bool) {
		return func() (time.Duration, bool) { return time.Second, true }
	}
	t.Cleanup(func() { newDelaySignal = newSchedDelay })
	e := startWith(t, 1, func(c *Config) {
		c.Admission.Rate, c.Admission.MinRate, c.Admission.DelayTarget = 1000, 100, 10*time.Millisecond
	})
	waitFor(t, 10*time.Second, "the rate lowered to the floor", func() bool {
		return e.gathered(t, "drover_frontend_admission_rate", "", "") == 100
	})
	e.f.gate.mu.Lock()
	rate := e.f.gate.rate
	e.f.gate.mu.Unlock()
	if rate != 100 {
		t.Fatalf("gate rate %v, want 100", rate)
	}
}

// TestSchedulerDelayReadsTheRuntime checks that the governor's signal comes
// from the runtime: after goroutines have run, it gives a p99 within
// reason.
func TestSchedulerDelayReadsTheRuntime(t *testing.T) {
	delay := newSchedDelay()
	delay()
	for range 20 {
		var wg sync.WaitGroup
		for range 1000 {
			wg.Go(func() {})
		}
		wg.Wait()
		if d, ok := delay(); ok {
			if d <= 0 || d > time.Minute {
				t.Fatalf("scheduler delay p99 %v", d)
			}
			return
		}
	}
	t.Fatal("no scheduler delay sample after 20,000 goroutines")
}
