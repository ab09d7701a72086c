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

// TestAdmissionRefusesBeforeAuthentication runs a herd of 30 against a
// frontend with an accept rate of 2 a second: the refused get 503, before
// any token check (a device with a wrong token is answered 503, not 401),
// counted, with a Retry-After that is their place in line: the times they
// are told to come back at (answer + Retry-After) spread over the line's
// length, at most two seconds' worth of the rate in any second. One that
// comes back when told is let in.
func TestAdmissionRefusesBeforeAuthentication(t *testing.T) {
	const n, rate = 30, 2
	e := startWith(t, n, func(c *Config) {
		c.Admission.Rate, c.Admission.Burst, c.Admission.MinRate = rate, 2, 1
	})
	type answer struct {
		i      int
		status int
		retry  int
		back   time.Time // when it was told to come back
	}
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
	)
	for i := range n {
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
				a.back = time.Now().Add(time.Duration(a.retry) * time.Second)
			}
			mu.Lock()
			answers = append(answers, a)
			mu.Unlock()
		})
	}
	wg.Wait()
	var backs []time.Time
	refusedBadToken := 0
	for _, a := range answers {
		switch a.status {
		case http.StatusServiceUnavailable:
			if a.retry < 1 {
				t.Errorf("device %d: 503 without a Retry-After", a.i)
			}
			backs = append(backs, a.back)
			if a.i%3 == 0 {
				refusedBadToken++
			}
		case http.StatusSwitchingProtocols, http.StatusUnauthorized:
		default:
			t.Fatalf("device %d: status %d", a.i, a.status)
		}
	}
	// However slowly the herd arrives here, at 2 a second most are refused.
	if len(backs) < n/2 {
		t.Fatalf("%d refused of %d, want most (rate %d/s, burst 2)", len(backs), n, rate)
	}
	if refusedBadToken == 0 {
		t.Error("no device with a wrong token was refused 503: admission must come before the token check")
	}
	// Place k is at k ÷ rate s; Retry-After rounds it up to whole seconds,
	// so each return time lies within a second after its place: the
	// returns span the line (less a second), and no second holds more than
	// two seconds' worth of places.
	slices.SortFunc(backs, func(a, b time.Time) int { return a.Compare(b) })
	if span, want := backs[len(backs)-1].Sub(backs[0]), time.Duration(len(backs)-1)*time.Second/rate-time.Second; span < want {
		t.Errorf("%d refused devices told to come back within %v, want spread over at least %v", len(backs), span, want)
	}
	for i := range backs {
		in := 0
		for j := i; j < len(backs) && backs[j].Sub(backs[i]) < time.Second; j++ {
			in++
		}
		if in > 2*rate+1 {
			t.Errorf("%d devices told to come back within one second from %v: the line is not kept", in, backs[i])
			break
		}
	}
	if got := e.refusals(reasonAcceptRate); got != float64(len(backs)) {
		t.Errorf("refusals{accept_rate} %v, want %d", got, len(backs))
	}
	if got := e.gathered(t, "drover_frontend_retry_after_seconds", "", ""); got != float64(len(backs)) {
		t.Errorf("retry_after_seconds observed %v times, want %d", got, len(backs))
	}

	// A refused device that honours its Retry-After is let in.
	var back answer
	for _, a := range answers {
		if a.status == http.StatusServiceUnavailable && a.i%3 != 0 && a.retry <= 3 && (back.retry == 0 || a.retry < back.retry) {
			back = a
		}
	}
	if back.retry == 0 {
		t.Fatalf("no refused device with a good token and a short Retry-After among %v", answers)
	}
	time.Sleep(time.Until(back.back))
	ws, resp, err := e.dial(back.i, tokenOf(back.i), false)
	if err != nil {
		t.Fatalf("device %d back after its Retry-After of %d s: %v (%v)", back.i, back.retry, err, resp)
	}
	ws.Close()
}

// TestFlappingDeviceIsHeldBack reconnects one device past the flapping
// limit: it is held back with 429 and a Retry-After of the hold, counted;
// its id without its token gets the 401 any id gets; another device is not
// held back.
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
	// The server counts a connection right after its 101: wait for it.
	waitFor(t, 5*time.Second, "the hold", func() bool {
		return e.gathered(t, "drover_frontend_flapping_holds_total", "", "") == 1
	})
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
	// Whoever does not hold its token learns nothing: 401, as for any id.
	if _, resp, err := e.dial(0, "wrong", false); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the held-back device's id with a wrong token: %v (%v), want 401", err, resp)
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
