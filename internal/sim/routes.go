package sim

import "math"

// waypoint is a point of a route: degrees, and metres above sea level.
type waypoint struct {
	lat, lon, alt float64
}

// city is a place vehicles drive between, and where buses and cars may loop in town.
type city struct {
	name string
	waypoint
	// loopKm is the radius of the in-town loop.
	loopKm float64
}

// cities are the simulated fleet's towns (approximate centres).
var cities = []city{
	{"Johannesburg", waypoint{-26.2041, 28.0473, 1750}, 8},
	{"Pretoria", waypoint{-25.7479, 28.2293, 1340}, 7},
	{"Durban", waypoint{-29.8587, 31.0218, 20}, 6},
	{"Cape Town", waypoint{-33.9249, 18.4241, 30}, 6},
	{"Gaborone", waypoint{-24.6282, 25.9231, 1010}, 4},
	{"Windhoek", waypoint{-22.5597, 17.0832, 1655}, 4},
	{"Maputo", waypoint{-25.9692, 32.5732, 40}, 5},
	{"Harare", waypoint{-17.8252, 31.0335, 1490}, 6},
	{"Lusaka", waypoint{-15.3875, 28.3228, 1280}, 6},
	{"Lilongwe", waypoint{-13.9626, 33.7741, 1050}, 5},
}

// corridor is a long-distance road given as a short list of waypoints, driven back and forth
// along great circles between them.
type corridor struct {
	name string
	pts  []waypoint
}

// corridors are the real trunk roads between the cities, a handful of towns on each: enough for
// plausible positions, headings and distances, not a road map.
var corridors = []corridor{
	{"N1 Cape Town–Johannesburg–Pretoria", []waypoint{
		{-33.9249, 18.4241, 30},   // Cape Town
		{-33.6461, 19.4485, 220},  // Worcester
		{-33.1955, 20.8587, 660},  // Laingsburg
		{-32.3567, 22.5829, 850},  // Beaufort West
		{-30.7192, 25.0973, 1350}, // Colesberg
		{-29.0852, 26.1596, 1400}, // Bloemfontein
		{-27.6504, 27.2349, 1370}, // Kroonstad
		{-26.2041, 28.0473, 1750}, // Johannesburg
		{-25.7479, 28.2293, 1340}, // Pretoria
	}},
	{"N3 Johannesburg–Durban", []waypoint{
		{-26.2041, 28.0473, 1750}, // Johannesburg
		{-26.5083, 28.3583, 1500}, // Heidelberg
		{-27.0300, 28.6000, 1520}, // Villiers
		{-28.2723, 29.1295, 1620}, // Harrismith
		{-28.3700, 29.3800, 1680}, // Van Reenen
		{-28.5539, 29.7784, 1010}, // Ladysmith
		{-29.0000, 29.8800, 1190}, // Estcourt
		{-29.6006, 30.3794, 650},  // Pietermaritzburg
		{-29.8587, 31.0218, 20},   // Durban
	}},
	{"N4 Maputo Corridor Pretoria–Maputo", []waypoint{
		{-25.7479, 28.2293, 1340}, // Pretoria
		{-25.8100, 28.7400, 1420}, // Bronkhorstspruit
		{-25.8713, 29.2332, 1560}, // eMalahleni
		{-25.6900, 30.0300, 1980}, // Belfast
		{-25.4753, 30.9694, 660},  // Mbombela
		{-25.4800, 31.5100, 350},  // Malelane
		{-25.4333, 31.9500, 150},  // Komatipoort / Ressano Garcia
		{-25.9692, 32.5732, 40},   // Maputo
	}},
	{"Trans-Kalahari B6/A2/N4 Windhoek–Pretoria", []waypoint{
		{-22.5597, 17.0832, 1655}, // Windhoek
		{-22.4500, 18.9667, 1440}, // Gobabis
		{-22.2800, 19.9900, 1300}, // Buitepos / Mamuno
		{-23.6750, 22.7880, 1100}, // Kang
		{-24.6017, 24.7283, 1190}, // Jwaneng
		{-25.2167, 25.6833, 1190}, // Lobatse
		{-25.5389, 26.0750, 1200}, // Zeerust
		{-25.6676, 27.2421, 1170}, // Rustenburg
		{-25.7479, 28.2293, 1340}, // Pretoria
	}},
	{"A1/N4 Gaborone–Johannesburg", []waypoint{
		{-24.6282, 25.9231, 1010}, // Gaborone
		{-24.6800, 26.0000, 1000}, // Tlokweng border
		{-25.5389, 26.0750, 1200}, // Zeerust
		{-25.6676, 27.2421, 1170}, // Rustenburg
		{-25.9000, 27.7000, 1450}, // Hartbeespoort
		{-26.2041, 28.0473, 1750}, // Johannesburg
	}},
	{"N1/A4 Pretoria–Beitbridge–Harare", []waypoint{
		{-25.7479, 28.2293, 1340}, // Pretoria
		{-24.8833, 28.2833, 1100}, // Bela-Bela
		{-23.9045, 29.4689, 1310}, // Polokwane
		{-23.0439, 29.9047, 1000}, // Makhado
		{-22.3524, 30.0407, 520},  // Musina
		{-22.2167, 30.0000, 460},  // Beitbridge
		{-21.2500, 30.7300, 600},  // Rutenga
		{-20.0744, 30.8328, 1070}, // Masvingo
		{-19.0200, 30.9000, 1450}, // Chivhu
		{-17.8252, 31.0335, 1490}, // Harare
	}},
	{"A1/T2 Harare–Chirundu–Lusaka", []waypoint{
		{-17.8252, 31.0335, 1490}, // Harare
		{-17.3667, 30.2000, 1150}, // Chinhoyi
		{-16.8167, 29.6833, 1300}, // Karoi
		{-16.3000, 29.2500, 1100}, // Makuti
		{-16.0333, 28.8500, 400},  // Chirundu
		{-15.7691, 28.1814, 980},  // Kafue
		{-15.3875, 28.3228, 1280}, // Lusaka
	}},
	{"T4/M12 Great East Road Lusaka–Lilongwe", []waypoint{
		{-15.3875, 28.3228, 1280}, // Lusaka
		{-15.0000, 30.2200, 400},  // Luangwa Bridge
		{-14.5600, 30.8100, 600},  // Nyimba
		{-14.2426, 31.3253, 1000}, // Petauke
		{-13.6333, 32.6500, 1100}, // Chipata
		{-13.8000, 32.8800, 1200}, // Mchinji
		{-13.9626, 33.7741, 1050}, // Lilongwe
	}},
}

// route is a corridor or a town loop ready to drive: waypoints as unit vectors, segment lengths.
type route struct {
	name string
	pts  []waypoint
	vec  [][3]float64
	seg  []float64 // km, seg[i] from pts[i] to pts[i+1]
	cum  []float64 // km from the start to pts[i]
	km   float64   // total length
	loop bool      // a town loop: drive on past the last point to the first

	// ang and sinAng are each segment's angle at the Earth's centre and its sine: slerp's
	// constants, computed once (a vehicle places itself up to 100 times a second).
	ang, sinAng []float64
}

// earthRadiusKm is the mean radius of the Earth.
const earthRadiusKm = 6371.0

var (
	// corridorRoutes are the corridors, townRoutes a loop per city (same order as cities).
	corridorRoutes, townRoutes []*route
)

func init() {
	for _, c := range corridors {
		corridorRoutes = append(corridorRoutes, newRoute(c.name, c.pts, false))
	}
	for _, c := range cities {
		// An irregular octagon around the centre, as a ring road with some in-town detours.
		var pts []waypoint
		const n = 8
		for i := range n {
			r := c.loopKm * (0.6 + 0.4*float64((i*5)%3)/2)
			a := 2 * math.Pi * float64(i) / n
			dlat := r * math.Cos(a) / 111.32
			dlon := r * math.Sin(a) / (111.32 * math.Cos(c.lat*math.Pi/180))
			pts = append(pts, waypoint{c.lat + dlat, c.lon + dlon, c.alt + 15*math.Sin(3*a)})
		}
		townRoutes = append(townRoutes, newRoute(c.name+" town loop", pts, true))
	}
}

func newRoute(name string, pts []waypoint, loop bool) *route {
	r := &route{name: name, pts: pts, loop: loop}
	if loop {
		r.pts = append(append([]waypoint(nil), pts...), pts[0])
	}
	for _, p := range r.pts {
		r.vec = append(r.vec, unitVec(p.lat, p.lon))
	}
	for i := 0; i+1 < len(r.pts); i++ {
		ω := angle(r.vec[i], r.vec[i+1])
		r.ang, r.sinAng = append(r.ang, ω), append(r.sinAng, math.Sin(ω))
		d := ω * earthRadiusKm
		r.seg = append(r.seg, d)
		r.cum = append(r.cum, r.km)
		r.km += d
	}
	return r
}

func unitVec(lat, lon float64) [3]float64 {
	φ, λ := lat*math.Pi/180, lon*math.Pi/180
	return [3]float64{math.Cos(φ) * math.Cos(λ), math.Cos(φ) * math.Sin(λ), math.Sin(φ)}
}

// angle is the angle between unit vectors a and b, in radians.
func angle(a, b [3]float64) float64 {
	cx := a[1]*b[2] - a[2]*b[1]
	cy := a[2]*b[0] - a[0]*b[2]
	cz := a[0]*b[1] - a[1]*b[0]
	return math.Atan2(math.Sqrt(cx*cx+cy*cy+cz*cz), a[0]*b[0]+a[1]*b[1]+a[2]*b[2])
}

// slerp returns the point a fraction t of the way from a to b along the great circle, as
// latitude and longitude in degrees.
func slerp(a, b [3]float64, t float64) (lat, lon float64) {
	ω := angle(a, b)
	return slerpAngle(a, b, ω, math.Sin(ω), t)
}

// slerpAngle is slerp given the angle ω between a and b and its sine s.
func slerpAngle(a, b [3]float64, ω, s, t float64) (lat, lon float64) {
	var p [3]float64
	if ω < 1e-12 {
		p = a
	} else {
		wa, wb := math.Sin((1-t)*ω)/s, math.Sin(t*ω)/s
		for i := range p {
			p[i] = wa*a[i] + wb*b[i]
		}
	}
	return math.Atan2(p[2], math.Hypot(p[0], p[1])) * 180 / math.Pi, math.Atan2(p[1], p[0]) * 180 / math.Pi
}

// bearing returns the initial great-circle bearing from (lat1, lon1) to (lat2, lon2), in degrees
// clockwise from north, in [0, 360).
func bearing(lat1, lon1, lat2, lon2 float64) float64 {
	φ1, φ2 := lat1*math.Pi/180, lat2*math.Pi/180
	dλ := (lon2 - lon1) * math.Pi / 180
	y := math.Sin(dλ) * math.Cos(φ2)
	x := math.Cos(φ1)*math.Sin(φ2) - math.Sin(φ1)*math.Cos(φ2)*math.Cos(dλ)
	b := math.Mod(math.Atan2(y, x)*180/math.Pi+360, 360)
	if b >= 360 || math.IsNaN(b) {
		b = 0
	}
	return b
}
