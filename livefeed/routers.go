package livefeed

import "context"

// routerSub is one router endpoint's subscription goroutine.
type routerSub struct {
	cancel context.CancelFunc
}

// setRouters makes the livefeed's subscriptions those of eps (the endpoint
// list as internal/endpoints resolves it): one for each new router, and the
// subscriptions to routers no longer listed ended. Called at start and by
// the endpoint watcher, with f.subsCtx set: its end ends every
// subscription.
func (f *Feed) setRouters(eps []string) {
	f.subsMu.Lock()
	defer f.subsMu.Unlock()
	listed := make(map[string]bool, len(eps))
	for _, ep := range eps {
		listed[ep] = true
		if _, ok := f.subs[ep]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(f.subsCtx)
		f.subs[ep] = &routerSub{cancel: cancel}
		i := f.subsN
		f.subsN++
		f.subsWG.Go(func() { f.subscribeRouter(ctx, i, ep) })
	}
	for ep, s := range f.subs {
		if !listed[ep] {
			f.logger.Info("livefeed: router removed from the endpoint list; unsubscribing", "router_endpoint", ep)
			s.cancel()
			delete(f.subs, ep)
		}
	}
}
