package forward

import (
	"slices"
	"testing"
)

func TestSubtractRemoveTotal(t *testing.T) {
	iv := func(a, b uint64) Interval { return Interval{First: a, Last: b} }
	for _, tc := range []struct {
		from Interval
		ivs  []Interval
		want []Interval
	}{
		{iv(1, 10), nil, []Interval{iv(1, 10)}},
		{iv(1, 10), []Interval{iv(20, 30)}, []Interval{iv(1, 10)}},
		{iv(1, 10), []Interval{iv(1, 10)}, nil},
		{iv(1, 10), []Interval{iv(0, 20)}, nil},
		{iv(1, 10), []Interval{iv(4, 5)}, []Interval{iv(1, 3), iv(6, 10)}},
		// unsorted and overlapping
		{iv(1, 20), []Interval{iv(15, 16), iv(3, 4), iv(4, 6)}, []Interval{iv(1, 2), iv(7, 14), iv(17, 20)}},
		{iv(5, 9), []Interval{iv(1, 5), iv(9, 12)}, []Interval{iv(6, 8)}},
	} {
		got := Subtract(tc.from, tc.ivs, nil)
		if !slices.Equal(got, tc.want) {
			t.Errorf("Subtract(%v, %v) = %v, want %v", tc.from, tc.ivs, got, tc.want)
		}
	}
	if got := Subtract(iv(1, 2), nil, []Interval{iv(7, 8)}); !slices.Equal(got, []Interval{iv(7, 8), iv(1, 2)}) {
		t.Errorf("Subtract appends to dst: got %v", got)
	}
	l := []Interval{iv(1, 2), iv(5, 9), iv(1, 2)}
	l = RemoveInterval(l, iv(1, 2))
	if !slices.Equal(l, []Interval{iv(5, 9), iv(1, 2)}) {
		t.Errorf("RemoveInterval removes one occurrence: got %v", l)
	}
	if l = RemoveInterval(l, iv(3, 3)); len(l) != 2 {
		t.Errorf("RemoveInterval of an absent interval changed the list: %v", l)
	}
	if n := TotalLen([]Interval{iv(1, 2), iv(5, 9)}); n != 7 {
		t.Errorf("TotalLen = %d, want 7", n)
	}
}
