package forward

import (
	"math"
	"sort"
)

// Interval is the closed range of sequences First..Last, First <= Last.
type Interval struct {
	First, Last uint64
}

// Len returns the number of sequences in the interval.
func (iv Interval) Len() uint64 { return iv.Last - iv.First + 1 }

// SeqSet is a set of sequence numbers kept as sorted, disjoint, non-adjacent
// intervals: a stream that is mostly in order costs one interval, and each
// gap one more. It is bounded: past its limit it forgets its lowest (oldest)
// intervals. Forgetting is safe where a SeqSet is used for deduplication: a
// forgotten sequence that comes again is stored again, which downstream
// idempotence absorbs; nothing is ever refused because of it. The zero
// value is an unbounded empty set. A SeqSet is not safe for concurrent use.
type SeqSet struct {
	iv        []Interval
	max       int
	forgotten uint64
}

// NewSeqSet returns an empty set holding at most max intervals (max <= 0:
// unbounded).
func NewSeqSet(max int) *SeqSet { return &SeqSet{max: max} }

// touches reports whether a sequence range ending at last touches (overlaps
// or is adjacent to) one starting at first.
func touches(last, first uint64) bool { return last == math.MaxUint64 || last+1 >= first }

// search returns the index of the first interval that touches or follows
// seq: the first whose Last+1 >= seq.
func (s *SeqSet) search(seq uint64) int {
	return sort.Search(len(s.iv), func(k int) bool { return touches(s.iv[k].Last, seq) })
}

// Add puts first..last in the set and returns how many intervals it forgot
// to stay within its bound. A range with last < first is ignored.
func (s *SeqSet) Add(first, last uint64) (forgot int) {
	if last < first {
		return 0
	}
	n := len(s.iv)
	if n > 0 {
		// Fast path: in-order streams extend or follow the last interval.
		l := &s.iv[n-1]
		if first >= l.First && touches(l.Last, first) {
			l.Last = max(l.Last, last)
			return 0
		}
		if !touches(l.Last, first) {
			s.iv = append(s.iv, Interval{first, last})
			return s.trim()
		}
	}
	i := s.search(first)
	j := i
	for j < n && touches(last, s.iv[j].First) {
		j++
	}
	if i == j {
		s.iv = append(s.iv, Interval{})
		copy(s.iv[i+1:], s.iv[i:])
		s.iv[i] = Interval{first, last}
		return s.trim()
	}
	s.iv[i] = Interval{min(first, s.iv[i].First), max(last, s.iv[j-1].Last)}
	s.iv = append(s.iv[:i+1], s.iv[j:]...)
	return 0
}

func (s *SeqSet) trim() int {
	if s.max <= 0 || len(s.iv) <= s.max {
		return 0
	}
	k := len(s.iv) - s.max
	s.iv = append(s.iv[:0], s.iv[k:]...)
	s.forgotten += uint64(k)
	return k
}

// Contains reports whether every sequence of first..last is in the set.
func (s *SeqSet) Contains(first, last uint64) bool {
	if last < first {
		return true
	}
	i := sort.Search(len(s.iv), func(k int) bool { return s.iv[k].Last >= first })
	return i < len(s.iv) && s.iv[i].First <= first && s.iv[i].Last >= last
}

// Missing appends to dst the parts of first..last that are not in the set,
// in order, and returns it.
func (s *SeqSet) Missing(first, last uint64, dst []Interval) []Interval {
	if last < first {
		return dst
	}
	cur := first
	for i := sort.Search(len(s.iv), func(k int) bool { return s.iv[k].Last >= first }); i < len(s.iv); i++ {
		iv := s.iv[i]
		if iv.First > last {
			break
		}
		if iv.First > cur {
			dst = append(dst, Interval{cur, iv.First - 1})
		}
		if iv.Last >= last {
			return dst
		}
		cur = iv.Last + 1
	}
	return append(dst, Interval{cur, last})
}

// Len returns the number of intervals held.
func (s *SeqSet) Len() int { return len(s.iv) }

// Forgotten returns how many intervals the set has forgotten to stay within
// its bound since it was made.
func (s *SeqSet) Forgotten() uint64 { return s.forgotten }

// Intervals returns a copy of the intervals, in order.
func (s *SeqSet) Intervals() []Interval { return append([]Interval(nil), s.iv...) }
