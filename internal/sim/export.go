package sim

import "math"

// Route is one of the roads simulated vehicles drive: a corridor between
// cities, or a loop in one. The alert engine's benchmarks and scripted
// trips put geofences along them.
type Route struct {
	Name string
	// Points are the waypoints, [lat, lon] in degrees (a loop's last
	// point repeats its first).
	Points [][2]float64
	// Km is the length along great circles.
	Km   float64
	Loop bool
	r    *route
}

// Routes returns the corridors, then the town loops (one per city).
func Routes() []Route {
	var out []Route
	for _, r := range append(append([]*route(nil), corridorRoutes...), townRoutes...) {
		rt := Route{Name: r.name, Km: r.km, Loop: r.loop, r: r}
		for _, p := range r.pts {
			rt.Points = append(rt.Points, [2]float64{p.lat, p.lon})
		}
		out = append(out, rt)
	}
	return out
}

// At returns the position km along the route (clamped to its ends; a
// loop wraps), and the heading there in degrees clockwise from north.
func (rt Route) At(km float64) (lat, lon, heading float64) {
	r := rt.r
	if r.loop {
		km = math.Mod(km, r.km)
		if km < 0 {
			km += r.km
		}
	}
	km = math.Max(0, math.Min(km, r.km))
	i := 0
	for i+1 < len(r.seg) && km > r.cum[i]+r.seg[i] {
		i++
	}
	t := 0.0
	if r.seg[i] > 0 {
		t = (km - r.cum[i]) / r.seg[i]
	}
	lat, lon = slerp(r.vec[i], r.vec[i+1], math.Min(1, t))
	b := r.pts[i+1]
	return lat, lon, bearing(lat, lon, b.lat, b.lon)
}
