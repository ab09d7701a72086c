package forward

// Small operations on lists of intervals, for the receivers of batches (the
// storage writer, the alerts engine, the router) that track which sequences
// they hold or are appending.

// Subtract appends to dst the parts of iv that none of ivs covers; ivs
// need not be sorted nor disjoint.
func Subtract(iv Interval, ivs []Interval, dst []Interval) []Interval {
	parts := []Interval{iv}
	for _, p := range ivs {
		var next []Interval
		for _, x := range parts {
			if p.Last < x.First || p.First > x.Last {
				next = append(next, x)
				continue
			}
			if p.First > x.First {
				next = append(next, Interval{First: x.First, Last: p.First - 1})
			}
			if p.Last < x.Last {
				next = append(next, Interval{First: p.Last + 1, Last: x.Last})
			}
		}
		parts = next
	}
	return append(dst, parts...)
}

// RemoveInterval removes one occurrence of iv from ivs (in place) and
// returns the list.
func RemoveInterval(ivs []Interval, iv Interval) []Interval {
	for i, x := range ivs {
		if x == iv {
			return append(ivs[:i], ivs[i+1:]...)
		}
	}
	return ivs
}

// TotalLen returns the number of sequences in ivs (counted once per
// interval: ivs are expected disjoint).
func TotalLen(ivs []Interval) uint64 {
	var n uint64
	for _, iv := range ivs {
		n += iv.Len()
	}
	return n
}
