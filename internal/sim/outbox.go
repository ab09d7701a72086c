package sim

// outbox is a device's store of un-acked readings, oldest first: a ring that grows by doubling up
// to its limit, so that idle or well-acked devices hold little memory.
type outbox struct {
	buf   []sample
	head  int // index in buf of the oldest reading
	n     int // readings held
	limit int
}

func newOutbox(limit int) *outbox {
	return &outbox{limit: limit}
}

// len returns the number of readings held.
func (o *outbox) len() int { return o.n }

// full reports whether the outbox holds its limit.
func (o *outbox) full() bool { return o.n >= o.limit }

// push appends a reading and returns a pointer to it to fill in; the outbox must not be full.
func (o *outbox) push() *sample {
	if o.n == len(o.buf) {
		o.grow()
	}
	s := &o.buf[(o.head+o.n)%len(o.buf)]
	o.n++
	*s = sample{}
	return s
}

func (o *outbox) grow() {
	size := min(max(2*len(o.buf), 16), o.limit)
	nb := make([]sample, size)
	for i := range o.n {
		nb[i] = o.buf[(o.head+i)%len(o.buf)]
	}
	o.buf, o.head = nb, 0
}

// at returns the i-th oldest reading, 0 ≤ i < len.
func (o *outbox) at(i int) *sample {
	return &o.buf[(o.head+i)%len(o.buf)]
}

// pop removes the oldest reading.
func (o *outbox) pop() {
	o.head = (o.head + 1) % len(o.buf)
	o.n--
	if o.n == 0 {
		o.head = 0
		// A device that got everything acked gives its buffer back when it is large, so that a
		// fleet recovering from an outage shrinks again.
		if len(o.buf) > 1024 {
			o.buf = nil
		}
	}
}
