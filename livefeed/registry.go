package livefeed

import (
	"context"
	"path/filepath"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// With -registry-api the livefeed also follows the device registry
// (internal/registry's follower), for one thing: a decommissioned or
// deleted device leaves the map. Its vehicle is removed from every client
// within the follower's propagation time, and its readings still in
// flight (a router's backlog from before the decommission) are not shown.
// Its data stays in the sinks. A suspended device stays on the map with
// its last position (an operator looking for a stolen vehicle wants it).
// Until a copy of the registry is in force nothing is hidden.

// openRegistry returns the store to follow: the one given (drover all
// shares its frontend's), or a follower of Config.API; nil without API.
func (f *Feed) openRegistry() (store *registry.Store, own bool, err error) {
	switch {
	case f.cfg.RegistryStore != nil:
		return f.cfg.RegistryStore, false, nil
	case !f.cfg.API.Enabled():
		return nil, false, nil
	}
	fc := registry.DefaultFollowConfig()
	fc.API, fc.NotBefore = f.cfg.API, f.cfg.NotBefore
	if f.cfg.CacheDir != "" {
		fc.Cache = filepath.Join(f.cfg.CacheDir, "registry.cache")
	}
	store, err = registry.NewFollower(fc, f.logger, f.reg)
	return store, err == nil, err
}

// hidden reports whether the registry in force says device id is not to
// be shown: decommissioned, or no longer registered.
func (f *Feed) hidden(id string) bool {
	st := f.registry
	if st == nil {
		return false
	}
	r := st.Current()
	if r == nil {
		return false
	}
	d, ok := r.Lookup(id)
	return !ok || d.State == registry.StateDecommissioned
}

// registryChanged removes from the map the vehicles of the devices that
// the change decommissioned or removed.
func (f *Feed) registryChanged(u registry.Update) {
	var ids []string
	if u.All {
		f.store.each(func(v *vehicle) bool {
			if f.hidden(v.id) {
				ids = append(ids, v.id)
			}
			return true
		})
	} else {
		for _, id := range u.Changed {
			if f.hidden(id) {
				ids = append(ids, id)
			}
		}
	}
	if gone := f.store.remove(ids); len(gone) > 0 {
		f.m.vehicles.Sub(float64(len(gone)))
		f.m.vehiclesRetired.Add(float64(len(gone)))
		f.dispatch(gone, time.Now().UnixNano())
		f.logger.Info("livefeed: vehicles of decommissioned or removed devices taken off the map", "vehicles", len(gone))
	}
}

// runRegistry keeps the store current until ctx ends (when the livefeed
// owns it).
func runRegistry(ctx context.Context, st *registry.Store) { _ = st.Run(ctx) }
