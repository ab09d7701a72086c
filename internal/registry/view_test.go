package registry

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
)

func active(id, token string, l Labels) Change {
	return Change{ID: id, State: StateActive, Labels: l, HasToken: true, Token: auth.Hash(token)}
}

// TestAuthorizeStates: only an active device with its token gets in; a
// suspended or decommissioned one is told so only when its token is
// right; a device without a token (all revoked) and an empty token never.
func TestAuthorizeStates(t *testing.T) {
	b := newBuilder()
	s := b.startSnapshot(4)
	s.add(active("on", "t-on", Labels{Fleet: "acme"}))
	sus := active("sus", "t-sus", Labels{})
	sus.State = StateSuspended
	s.add(sus)
	dec := active("dec", "t-dec", Labels{})
	dec.State = StateDecommissioned
	s.add(dec)
	odd := active("odd", "t-odd", Labels{})
	odd.State = ParseState("quarantined")
	s.add(odd)
	s.add(Change{ID: "none", State: StateActive})
	r := s.finish("feed", 7)
	now := time.Now()
	for _, c := range []struct {
		id, token string
		want      error
	}{
		{"on", "t-on", nil},
		{"on", "wrong", ErrBadToken},
		{"on", "", ErrBadToken},
		{"ghost", "t-on", ErrUnknownDevice},
		{"ghost", "", ErrUnknownDevice},
		{"sus", "t-sus", ErrSuspended},
		{"sus", "wrong", ErrBadToken},
		{"dec", "t-dec", ErrDecommissioned},
		{"dec", "wrong", ErrBadToken},
		{"odd", "t-odd", ErrUnknownState},
		{"none", "", ErrBadToken},
		{"none", "anything", ErrBadToken},
	} {
		d, g, err := r.Authorize(c.id, c.token, now)
		if !errors.Is(err, c.want) || (err == nil) != (c.want == nil) {
			t.Errorf("Authorize(%q, %q) = %v, want %v", c.id, c.token, err, c.want)
			continue
		}
		if err == nil && (d.Fleet != "acme" || d.ID != "on" || !g.Until.IsZero() || g.Token != auth.Hash(c.token)) {
			t.Errorf("Authorize(%q) granted %+v %+v", c.id, d, g)
		}
	}
	if d, ok := r.Lookup("sus"); !ok || d.State != StateSuspended {
		t.Errorf("Lookup of a suspended device: %+v %v (its acked readings are still enriched)", d, ok)
	}
	if r.Len() != 5 || r.Version() != 7 || r.Feed() != "feed" {
		t.Errorf("Len %d Version %d Feed %q", r.Len(), r.Version(), r.Feed())
	}
}

// TestRotationOverlap: during a rotation's overlap the old and the new
// token both get in, the old one with its end as the grant's limit; after
// it, only the new one; a new rotation or a revocation ends the old one
// at once.
func TestRotationOverlap(t *testing.T) {
	b := newBuilder()
	s := b.startSnapshot(1)
	s.add(active("d", "old", Labels{}))
	s.finish("", 1)
	now := time.Now()
	end := now.Add(time.Hour)
	rot := active("d", "new", Labels{})
	rot.PrevToken, rot.PrevUntil = auth.Hash("old"), end.UnixMilli()
	r := b.apply([]Change{rot}, 2, now)
	if _, g, err := r.Authorize("d", "new", now); err != nil || !g.Until.IsZero() {
		t.Errorf("new token during the overlap: %v %+v", err, g)
	}
	_, g, err := r.Authorize("d", "old", now)
	if err != nil || g.Until.UnixMilli() != end.UnixMilli() {
		t.Errorf("old token during the overlap: %v, until %v (want %v)", err, g.Until, end)
	}
	if _, err := r.Check("d", auth.Hash("old"), end); !errors.Is(err, ErrBadToken) {
		t.Errorf("old token at the overlap's end: %v", err)
	}
	if _, err := r.Check("d", auth.Hash("new"), end.Add(time.Hour)); err != nil {
		t.Errorf("new token after the overlap: %v", err)
	}
	// Revoked: no token at all.
	r = b.apply([]Change{{ID: "d", State: StateActive}}, 3, now)
	for _, tok := range []string{"old", "new"} {
		if _, _, err := r.Authorize("d", tok, now); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s token after a revocation: %v", tok, err)
		}
	}
}

// TestApplyMatchesReference applies random changes in random batches and
// checks, after each, that the registry answers exactly like a plain map
// (the reference), through overlays and folds; and that registries made
// before stay as they were (immutability: readers hold them).
func TestApplyMatchesReference(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	b := newBuilder()
	ref := map[string]Change{}
	s := b.startSnapshot(0)
	for i := range 1500 {
		c := active(fmt.Sprintf("d%05d", i), fmt.Sprint("t", i), Labels{Fleet: fmt.Sprint("f", i%7)})
		s.add(c)
		ref[c.ID] = c
	}
	r := s.finish("", 0)
	type kept struct {
		r   *Registry
		ref map[string]Change
	}
	var history []kept
	now := time.Now()
	fleets := []string{"a", "b", "c"}
	for batch := range 150 {
		var chs []Change
		for range 1 + rnd.IntN(60) {
			id := fmt.Sprintf("d%05d", rnd.IntN(3000))
			switch rnd.IntN(4) {
			case 0:
				chs = append(chs, Change{ID: id, Deleted: true})
			case 1:
				c := active(id, fmt.Sprint("n", batch), Labels{Fleet: fleets[rnd.IntN(3)], Region: "r"})
				c.State = State(rnd.IntN(3))
				chs = append(chs, c)
			case 2:
				c := active(id, fmt.Sprint("m", batch), Labels{Class: "x"})
				c.PrevToken, c.PrevUntil = auth.Hash("prev"), now.Add(time.Duration(rnd.IntN(3)-1)*time.Hour).UnixMilli()
				chs = append(chs, c)
			default:
				chs = append(chs, Change{ID: id, State: StateActive, Labels: Labels{Fleet: "none"}})
			}
		}
		r = b.apply(chs, int64(batch+1), now)
		for _, c := range chs {
			if c.Deleted {
				delete(ref, c.ID)
			} else {
				ref[c.ID] = c
			}
		}
		if batch%15 == 0 {
			history = append(history, kept{r, clone(ref)})
		}
		checkReference(t, r, ref, now)
		if t.Failed() {
			t.Fatalf("after batch %d", batch)
		}
	}
	for i, h := range history {
		checkReference(t, h.r, h.ref, now)
		if t.Failed() {
			t.Fatalf("registry %d of the history changed after later changes", i)
		}
	}
}

func clone(m map[string]Change) map[string]Change {
	c := make(map[string]Change, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func checkReference(t *testing.T, r *Registry, ref map[string]Change, now time.Time) {
	t.Helper()
	if r.Len() != len(ref) {
		t.Errorf("Len %d, reference %d", r.Len(), len(ref))
	}
	for i := range 3000 {
		id := fmt.Sprintf("d%05d", i)
		c, want := ref[id]
		d, ok := r.Lookup(id)
		if ok != want {
			t.Errorf("Lookup(%s): %v, want %v", id, ok, want)
			continue
		}
		if !ok {
			continue
		}
		if d.Fleet != c.Labels.Fleet || d.Class != c.Labels.Class || d.Region != c.Labels.Region || d.State != c.State {
			t.Errorf("Lookup(%s) = %+v, want %+v", id, d, c)
		}
		_, err := r.Check(id, c.Token, now)
		if c.HasToken && c.State == StateActive && err != nil {
			t.Errorf("Check(%s) with its token: %v", id, err)
		}
		_, err = r.Check(id, auth.Hash("prev"), now)
		if valid := c.PrevUntil > now.UnixMilli() && c.State == StateActive; valid != (err == nil) {
			t.Errorf("Check(%s) with its previous token (until %v): %v", id, c.PrevUntil, err)
		}
	}
	n := 0
	_ = r.each(func(id string, x rec, p *prevToken) error {
		n++
		if _, ok := ref[id]; !ok {
			t.Errorf("each visits %s, not in the reference", id)
		}
		return nil
	})
	if n != len(ref) {
		t.Errorf("each visits %d devices, want %d", n, len(ref))
	}
}

// TestOverlayFolds: a long run of single changes keeps the overlay under
// its threshold (it folds into a new base), so that a change never copies
// more than a share of the registry.
func TestOverlayFolds(t *testing.T) {
	b := newBuilder()
	s := b.startSnapshot(20_000)
	for i := range 20_000 {
		s.add(active(fmt.Sprint("d", i), "t", Labels{}))
	}
	s.finish("", 0)
	now := time.Now()
	folds := 0
	var r *Registry
	for i := range 5000 {
		prev := b.cur
		r = b.apply([]Change{active(fmt.Sprint("d", i), "u", Labels{Fleet: "x"})}, int64(i+1), now)
		if len(r.over) > mergeThreshold(len(r.base)) {
			t.Fatalf("overlay of %d entries over the threshold %d", len(r.over), mergeThreshold(len(r.base)))
		}
		if len(prev.over) > 0 && r.over == nil {
			folds++
		}
	}
	if folds == 0 {
		t.Error("5,000 changes never folded the overlay")
	}
	if d, _ := r.Lookup("d4999"); d.Fleet != "x" {
		t.Errorf("last change lost: %+v", d)
	}
}
