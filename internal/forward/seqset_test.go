package forward

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func ivs(pairs ...uint64) []Interval {
	var out []Interval
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, Interval{pairs[i], pairs[i+1]})
	}
	return out
}

func TestSeqSetAdd(t *testing.T) {
	for _, tc := range []struct {
		name string
		adds []Interval
		want []Interval
	}{
		{"empty", nil, nil},
		{"one", ivs(5, 9), ivs(5, 9)},
		{"in order adjacent", ivs(1, 3, 4, 6, 7, 7), ivs(1, 7)},
		{"in order with gap", ivs(1, 3, 5, 6), ivs(1, 3, 5, 6)},
		{"overlap tail", ivs(1, 5, 3, 8), ivs(1, 8)},
		{"contained", ivs(1, 10, 3, 4), ivs(1, 10)},
		{"covers several", ivs(1, 2, 5, 6, 9, 10, 0+3, 0+3, 12, 20, 0+2, 11), ivs(1, 20)},
		{"before all", ivs(10, 12, 3, 4), ivs(3, 4, 10, 12)},
		{"adjacent before", ivs(10, 12, 5, 9), ivs(5, 12)},
		{"fills a gap exactly", ivs(1, 3, 7, 9, 4, 6), ivs(1, 9)},
		{"into a gap, not touching", ivs(1, 3, 9, 10, 5, 6), ivs(1, 3, 5, 6, 9, 10)},
		{"touches left of gap", ivs(1, 3, 9, 10, 4, 6), ivs(1, 6, 9, 10)},
		{"touches right of gap", ivs(1, 3, 9, 10, 6, 8), ivs(1, 3, 6, 10)},
		{"reversed range ignored", ivs(5, 4), nil},
		{"max uint64", ivs(math.MaxUint64-1, math.MaxUint64, 1, 1, math.MaxUint64-3, math.MaxUint64-2), ivs(1, 1, math.MaxUint64-3, math.MaxUint64)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSeqSet(0)
			for _, iv := range tc.adds {
				s.Add(iv.First, iv.Last)
			}
			if got := s.Intervals(); !slices.Equal(got, tc.want) {
				t.Errorf("after %v: %v, want %v", tc.adds, got, tc.want)
			}
		})
	}
}

func TestSeqSetContainsMissing(t *testing.T) {
	s := NewSeqSet(0)
	for _, iv := range ivs(3, 5, 8, 8, 10, 20) {
		s.Add(iv.First, iv.Last)
	}
	for _, tc := range []struct {
		first, last uint64
		contains    bool
		missing     []Interval
	}{
		{3, 5, true, nil},
		{4, 4, true, nil},
		{1, 2, false, ivs(1, 2)},
		{1, 3, false, ivs(1, 2)},
		{3, 8, false, ivs(6, 7)},
		{2, 25, false, ivs(2, 2, 6, 7, 9, 9, 21, 25)},
		{10, 20, true, nil},
		{21, 30, false, ivs(21, 30)},
		{6, 7, false, ivs(6, 7)},
		{5, 10, false, ivs(6, 7, 9, 9)},
	} {
		if got := s.Contains(tc.first, tc.last); got != tc.contains {
			t.Errorf("Contains(%d, %d) = %v, want %v", tc.first, tc.last, got, tc.contains)
		}
		if got := s.Missing(tc.first, tc.last, nil); !slices.Equal(got, tc.missing) {
			t.Errorf("Missing(%d, %d) = %v, want %v", tc.first, tc.last, got, tc.missing)
		}
	}
}

func TestSeqSetBound(t *testing.T) {
	s := NewSeqSet(3)
	for i := uint64(0); i < 5; i++ {
		s.Add(10*i+1, 10*i+2) // 1-2, 11-12, 21-22, 31-32, 41-42
	}
	if got, want := s.Intervals(), ivs(21, 22, 31, 32, 41, 42); !slices.Equal(got, want) {
		t.Fatalf("bounded set holds %v, want the newest %v", got, want)
	}
	if s.Forgotten() != 2 {
		t.Errorf("Forgotten() = %d, want 2", s.Forgotten())
	}
	// Forgotten sequences read as missing (stored again), never as present.
	if s.Contains(1, 2) {
		t.Error("a forgotten interval is still reported as contained")
	}
	// Merging does not count against the bound.
	s.Add(23, 30)
	if got, want := s.Intervals(), ivs(21, 32, 41, 42); !slices.Equal(got, want) {
		t.Fatalf("after merge: %v, want %v", got, want)
	}
	// An old interval inserted at the front is the first to go.
	s.Add(5, 6)
	s.Add(50, 51)
	if got, want := s.Intervals(), ivs(21, 32, 41, 42, 50, 51); !slices.Equal(got, want) {
		t.Fatalf("after overflow: %v, want %v", got, want)
	}
}

// TestSeqSetRandom checks the set against a plain map of sequences.
func TestSeqSetRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		s := NewSeqSet(0)
		ref := map[uint64]bool{}
		for range 30 {
			first := 1 + r.Uint64N(200)
			last := first + r.Uint64N(10)
			s.Add(first, last)
			for q := first; q <= last; q++ {
				ref[q] = true
			}
		}
		// Invariants: sorted, disjoint, not adjacent.
		iv := s.Intervals()
		for i := range iv {
			if iv[i].Last < iv[i].First || (i > 0 && iv[i-1].Last+1 >= iv[i].First) {
				t.Fatalf("round %d: intervals not sorted, disjoint and apart: %v", round, iv)
			}
		}
		for range 50 {
			first := 1 + r.Uint64N(220)
			last := first + r.Uint64N(15)
			all := true
			var want []Interval
			for q := first; q <= last; q++ {
				if ref[q] {
					continue
				}
				all = false
				if n := len(want); n > 0 && want[n-1].Last == q-1 {
					want[n-1].Last = q
				} else {
					want = append(want, Interval{q, q})
				}
			}
			if got := s.Contains(first, last); got != all {
				t.Fatalf("round %d: Contains(%d, %d) = %v, want %v (set %v)", round, first, last, got, all, iv)
			}
			if got := s.Missing(first, last, nil); !slices.Equal(got, want) {
				t.Fatalf("round %d: Missing(%d, %d) = %v, want %v (set %v)", round, first, last, got, want, iv)
			}
		}
	}
}

func BenchmarkSeqSetAddInOrder(b *testing.B) {
	s := NewSeqSet(4096)
	for i := range uint64(b.N) {
		s.Add(10*i+1, 10*i+10)
	}
}
