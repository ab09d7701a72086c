package forward

// The drainer's answers from routers and its timers: pongs, acks, refusals, back-off, links going down.

import (
	"time"
)

func (d *Drainer) onPong(l *link, m Message, now time.Time) {
	l.lastPong = now
	if l.incarnation != 0 && m.Incarnation != l.incarnation {
		// The router restarted since the last pong: what it had not acked
		// may be lost with the old process. Send it again now rather than
		// at the ack deadline.
		l.log.Info("forward: router restarted", "router", m.Router)
		d.giveBackAll(l, reasonRouterDown)
	}
	l.incarnation, l.router = m.Incarnation, m.Router
	if !l.up {
		l.up = true
		d.up.Add(1)
		d.m.routersUp.Set(float64(d.up.Load()))
		l.log.Info("forward: router up", "router", m.Router)
	}
}

func (d *Drainer) onAck(l *link, m Message, now time.Time) {
	d.acked.Add(m.First, m.Last)
	if l.backoff.Active() {
		l.backoff.Reset()
		l.busyUntil = time.Time{}
		l.log.Info("forward: router accepts batches again", "router", l.router)
	}
	if r := d.byFirst[m.First]; r != nil && r.last == m.Last && r.b.link == l {
		d.m.ackLatency.Observe(now.Sub(r.b.sentAt).Seconds())
		d.runAcked(r)
		return
	}
	// A late ack (its batch was given up and perhaps resent, grouped
	// differently), or an ack from the router the batch was not resent to:
	// the entries are durable there all the same.
	d.m.lateAcks.Inc()
	for b := range d.inflight {
		for _, r := range b.runs {
			if !r.acked && d.acked.Contains(r.first, r.last) {
				d.runAcked(r)
			}
		}
	}
}

func (d *Drainer) runAcked(r *run) {
	r.acked = true
	if d.byFirst[r.first] == r {
		delete(d.byFirst, r.first)
	}
	d.m.ackedBatches.Inc()
	d.m.ackedEntries.Add(float64(len(r.entries)))
	d.m.ackedBytes.Add(float64(r.bytes))
	b := r.b
	b.open--
	if b.open == 0 {
		delete(d.inflight, b)
		b.link.inflight--
		d.m.inflight.Set(float64(len(d.inflight)))
		d.complete(b)
	}
}

// onRefused handles busy and reject answers: the router did not store the
// batch; it backs off and the batch goes back to the queue.
func (d *Drainer) onRefused(l *link, m Message, now time.Time) {
	wait, entering := d.backOff(l, now)
	reason := reasonBusy
	if m.Type == TypeReject {
		reason = reasonRejected
		l.log.Error("forward: router rejected a batch; retrying later", "router", l.router, "first", m.First, "last", m.Last, "reason", m.Reason)
	} else if entering {
		l.log.Warn("forward: router busy; backing off", "router", l.router, "first", m.First, "last", m.Last, "reason", m.Reason, "backoff", wait)
	}
	if r := d.byFirst[m.First]; r != nil && r.last == m.Last && r.b.link == l {
		d.giveBack(r.b, reason)
	}
}

// backOff keeps batches away from l for a while: l refused one, or did not
// ack one in time (a router whose disk hangs still answers pings). Other
// routers that are up get the batches meanwhile. It returns the wait and
// whether l was not backing off already.
func (d *Drainer) backOff(l *link, now time.Time) (time.Duration, bool) {
	entering := !l.backoff.Active()
	// Jittered (internal/backoff), so that frontends refused at the same
	// moment do not come back at the same moment.
	wait := l.backoff.Next()
	l.busyUntil = now.Add(wait)
	return wait, entering
}

func (d *Drainer) onTick(now time.Time) {
	for _, l := range d.links {
		if l.up && now.Sub(l.lastPong) > d.cfg.DownAfter {
			d.setDown(l, "no heartbeat")
		}
	}
	for b := range d.inflight {
		if now.After(b.deadline) {
			wait, _ := d.backOff(b.link, now)
			b.link.log.Warn("forward: no ack from router in time; sending again", "router", b.link.router,
				"first", b.runs[0].first, "last", b.runs[len(b.runs)-1].last, "timeout", d.cfg.AckTimeout, "backoff", wait)
			d.giveBack(b, reasonTimeout)
		}
	}
	d.trySend(now)
}

// setDown marks a router down and gives back what it had not acked.
func (d *Drainer) setDown(l *link, why string) {
	if l.up {
		l.up = false
		d.m.routerDown.Inc()
		d.up.Add(-1)
		d.m.routersUp.Set(float64(d.up.Load()))
		l.log.Warn("forward: router down", "router", l.router, "why", why, "inflight_batches", l.inflight)
	}
	d.giveBackAll(l, reasonRouterDown)
}

func (d *Drainer) giveBackAll(l *link, reason string) {
	for b := range d.inflight {
		if b.link == l {
			d.giveBack(b, reason)
		}
	}
}
