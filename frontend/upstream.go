package frontend

import (
	"errors"
	"sync/atomic"
)

// errNoRouterYet is the frontend's readiness until a router has answered.
var errNoRouterYet = errors.New("frontend: no router has answered yet (its queue takes devices' readings, but they go nowhere)")

// routerCounter is what a drainer tells of its routers; forward.Drainer
// does. A drainer that does not (tests' fakes) has no routers to wait for.
type routerCounter interface {
	Routers() (up, total int)
}

// routerWatch makes a frontend ready only once its drainer has heard from
// a router since the start, and from then on whatever the routers do.
//
// Why once, and not "a router is up now": in a rolling update the next
// frontend is stopped only when this one is ready; a frontend that takes
// devices but cannot forward yet would hold all their readings (acked,
// durable, but not live, not stored) until its links come up. But a
// frontend that became unready whenever the routers are down would take
// every frontend out of the load balancer during a router outage, when
// they are exactly what keeps devices acked: the cascade peers' charts
// suffer (docs/deploy.md, "Probes").
type routerWatch struct {
	seen atomic.Bool
	rc   atomic.Pointer[routerCounter]
}

// watch follows d, if it can tell of its routers.
func (w *routerWatch) watch(d drainer) {
	if rc, ok := d.(routerCounter); ok {
		w.rc.Store(&rc)
		return
	}
	w.seen.Store(true)
}

// ready is nil once a router has answered (or there is nothing to wait
// for).
func (w *routerWatch) ready() error {
	if w.seen.Load() {
		return nil
	}
	rc := w.rc.Load()
	if rc == nil {
		return errNoRouterYet
	}
	if up, _ := (*rc).Routers(); up > 0 {
		w.seen.Store(true)
		return nil
	}
	return errNoRouterYet
}
