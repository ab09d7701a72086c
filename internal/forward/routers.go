package forward

import (
	"hash/fnv"
	"slices"
)

// preference is how much this frontend prefers the router at endpoint:
// batches go to the router of highest preference that is up and not busy.
// Rendezvous hashing of (sender, endpoint): frontends spread over the
// routers, and a router that joins or leaves moves only the frontends that
// prefer it.
func preference(sender, endpoint string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(sender))
	h.Write([]byte{0})
	h.Write([]byte(endpoint))
	return h.Sum64()
}

// setEndpoints makes the links those of eps: it opens a link to each new
// endpoint (started at once when start is set) and lets go of those no
// longer listed, giving back what they had in flight. Called by NewDrainer
// and then only by the loop.
func (d *Drainer) setEndpoints(eps []string, start bool) error {
	keep := make([]*link, 0, len(eps))
	for _, l := range d.links {
		if slices.Contains(eps, l.endpoint) {
			keep = append(keep, l)
			continue
		}
		// Gone from DNS (scaled in, restarted under a new address, or
		// taken out of the frontends' Service to be drained): what it
		// has not acked goes elsewhere; a late ack still counts.
		l.removed = true
		d.setDown(l, "removed from the endpoint list")
		l.log.Info("forward: router removed from the endpoint list")
		d.stopping.Add(1)
		go func() {
			defer d.stopping.Done()
			l.stop()
		}()
	}
	for _, ep := range eps {
		if slices.ContainsFunc(keep, func(l *link) bool { return l.endpoint == ep }) {
			continue
		}
		l, err := newLink(d, ep)
		if err != nil {
			// An address from DNS that the link cannot dial: logged, skipped
			// (static endpoints were checked by NewDrainer).
			d.log.Error("forward: cannot use router endpoint", "endpoint", ep, "err", err)
			if !start {
				return err
			}
			continue
		}
		l.pref = preference(d.cfg.Sender, ep)
		keep = append(keep, l)
		if start {
			l.start()
			l.log.Info("forward: router added to the endpoint list")
		}
	}
	slices.SortFunc(keep, func(a, b *link) int {
		switch {
		case a.pref > b.pref:
			return -1
		case a.pref < b.pref:
			return 1
		}
		return 0
	})
	d.links = keep
	d.total.Store(int32(len(keep)))
	return nil
}
