package storagewriter

import "slices"

// setRouters makes the writer's links those of eps (the endpoint list as
// internal/endpoints resolves it): it subscribes to each new router and
// lets go of those no longer listed. Called at start and by the endpoint
// watcher, never after Run has begun to stop.
//
// A router removed from the list is only one that no longer exists (the
// writers' Service lists every router pod, ready or not): what it had not
// delivered waits on its volume, and is sent when it is listed again. A
// batch being appended from a removed link is still appended, and its ack
// lost with the link: the router resends it, a duplicate the writer drops
// by (router, sequence).
func (w *Writer) setRouters(eps []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	keep := w.links[:0:0]
	for _, l := range w.links {
		if slices.Contains(eps, l.endpoint) {
			keep = append(keep, l)
			continue
		}
		l.log.Info("storage-writer: router removed from the endpoint list; unsubscribing")
		w.linkStops.Add(1)
		go func() {
			defer w.linkStops.Done()
			l.stop()
		}()
	}
	for _, ep := range eps {
		if slices.ContainsFunc(keep, func(l *link) bool { return l.endpoint == ep }) {
			continue
		}
		l, err := newLink(w, ep)
		if err != nil {
			// Static endpoints were checked by New; an address from DNS
			// that the link cannot use is skipped.
			w.logger.Error("storage-writer: cannot use router endpoint", "endpoint", ep, "err", err)
			continue
		}
		keep = append(keep, l)
		l.start()
		l.log.Info("storage-writer: subscribing to router")
	}
	w.links = keep
}
