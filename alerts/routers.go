package alerts

import "slices"

// setRouters makes the engine's links those of eps (the endpoint list as
// internal/endpoints resolves it): it subscribes to each new router and
// lets go of those no longer listed, like a storage writer
// (storagewriter/routers.go). Called at start and by the endpoint watcher,
// never after Run has begun to stop.
//
// A router removed from the list is only one that no longer exists (the
// Service lists every router pod, ready or not): what it had not delivered
// waits on its volume, and is sent when it is listed again. A batch being
// appended from a removed link is still appended, and its ack lost with
// the link: the router resends it, a duplicate the engine drops by
// (router, sequence).
func (e *Engine) setRouters(eps []string) {
	defer e.updateRoutersUp() // a router let go of is no longer up
	e.mu.Lock()
	defer e.mu.Unlock()
	keep := e.links[:0:0]
	for _, l := range e.links {
		if slices.Contains(eps, l.endpoint) {
			keep = append(keep, l)
			continue
		}
		l.log.Info("alerts: router removed from the endpoint list; unsubscribing")
		e.linkStops.Go(l.dl.Stop)
	}
	for _, ep := range eps {
		if slices.ContainsFunc(keep, func(l *link) bool { return l.endpoint == ep }) {
			continue
		}
		l, err := newLink(e, ep)
		if err != nil {
			// Static endpoints were checked by New; an address from DNS
			// that the link cannot use is skipped.
			e.logger.Error("alerts: cannot use router endpoint", "endpoint", ep, "err", err)
			continue
		}
		keep = append(keep, l)
		l.dl.Start()
		l.log.Info("alerts: subscribing to router")
	}
	e.links = keep
}
