package sim

import (
	"math"
	"math/rand/v2"

	"github.com/drover-telemetry/drover/telemetry"
)

// sample is one reading as a device keeps it in its outbox: plain values, no pointers, so that a
// full outbox is one flat allocation (the protobuf Reading is built only when a frame is sent).
type sample struct {
	seq    uint64
	timeMs int64
	// sentNs is when the reading was first handed to a socket, in nanoseconds since the fleet's
	// epoch plus one; 0 means never sent.
	sentNs int64
	odoKm  float64
	latE7  int32
	lonE7  int32

	altM, headingDeg, speedKmh, engTempC, rpm, fuelPct, battV, battA, pneuKpa float32

	sats      uint8
	ignition  bool
	hasAirbag bool  // has air brakes: pneuKpa is present
	events    uint8 // evHarshBraking, ...: marked in extra
}

// Southern Africa: the box every route stays in.
const (
	minLat, maxLat = -35.0, -13.0
	minLon, maxLon = 16.0, 34.0
)

// Event markers: a reading taken during an event carries extra[key] = 1.
const (
	ExtraHarshBraking = "event_harsh_braking"
	ExtraOverheating  = "event_overheating"
	ExtraSpeeding     = "event_speeding"
)

// Bits of sample.events.
const (
	evHarshBraking uint8 = 1 << iota
	evOverheating
	evSpeeding
)

// overheatC is the engine temperature above which a reading is marked overheating.
const overheatC = 105

// townLimitKmh is the speed limit on town loops, for every class.
const townLimitKmh = 60

// classSpec is what differs between vehicle classes.
type classSpec struct {
	limit, top         float64 // km/h: legal limit (the speeding threshold), physical top speed
	cruiseLo, cruiseHi float64 // km/h: the driver's cruising speed on a corridor
	accel              float64 // km/h per second, at most
	nominalV           float64 // 12 or 24 V electrical system
	airBrakes          bool    // pneumatic pressure reported
	idleRPM, rpmPerKmh float64
	tankL, lPer100km   float64    // fuel tank, consumption when driving (loaded)
	idleLph            float64    // consumption when idling
	loadLo, loadHi     float64    // payload fraction
	restH              [2]float64 // hours of driving between rest stops
	restMin            [2]float64 // minutes a rest stop lasts
	townShare          float64    // fraction of vehicles that loop in town instead
}

var classSpecs = map[string]*classSpec{
	"truck": {limit: 80, top: 100, cruiseLo: 70, cruiseHi: 78, accel: 1.5, nominalV: 24, airBrakes: true,
		idleRPM: 600, rpmPerKmh: 13, tankL: 400, lPer100km: 33, idleLph: 3, loadLo: 0.3, loadHi: 1,
		restH: [2]float64{2, 4}, restMin: [2]float64{30, 45}},
	"bus": {limit: 100, top: 120, cruiseLo: 85, cruiseHi: 96, accel: 2.2, nominalV: 24, airBrakes: true,
		idleRPM: 650, rpmPerKmh: 14, tankL: 300, lPer100km: 30, idleLph: 2.5, loadLo: 0.2, loadHi: 1,
		restH: [2]float64{2, 3}, restMin: [2]float64{15, 20}, townShare: 1.0 / 3},
	"car": {limit: 120, top: 170, cruiseLo: 100, cruiseHi: 116, accel: 3.5, nominalV: 12,
		idleRPM: 800, rpmPerKmh: 22, tankL: 55, lPer100km: 7.5, idleLph: 0.8, loadLo: 0.1, loadHi: 0.4,
		restH: [2]float64{1.5, 3}, restMin: [2]float64{10, 20}, townShare: 0.25},
}

// mover is what a device takes its readings from: the vehicle model, or a
// scripted trip.
type mover interface {
	step(dt float64, s *sample)
}

// Driving states.
const (
	driving  = iota
	stopping // braking to a planned stop
	stopped
)

// Kinds of stop.
const (
	stopTraffic  = iota // idling, ignition on
	stopRest            // ignition off
	stopFuel            // ignition off, refuelling
	stopTerminus        // end of the corridor: ignition off, then back the other way
)

// defaultEventRate is the default of Config.EventRate.
const defaultEventRate = 0.5

// vehicle is the physical state that readings sample. A vehicle drives a route (a corridor,
// back and forth, or a town loop) along great circles between its waypoints, with a class's
// speed profile, stops (traffic, rest, fuel, end of the route) and occasional events (harsh
// braking, speeding, overheating); engine, battery, air brakes and fuel follow.
type vehicle struct {
	rng     *rand.Rand
	spec    *classSpec
	pending float64 // s not yet ticked (less than minTick)

	rt       *route
	seg      int     // current segment of rt
	pos      float64 // km along it from rt.pts[seg]
	dir      int     // +1 towards the last waypoint, -1 back
	atEnd    bool    // reached the end of a corridor
	lat, lon float64 // degrees
	heading  float64 // degrees clockwise from north
	alt      float64
	altNoise float64 // terrain around the waypoints' interpolation, m

	// latE7 and lonE7 are lat and lon as readings carry them, set with them (per tick, not
	// per reading).
	latE7, lonE7 int32

	speed  float64 // km/h
	cruise float64 // km/h the driver aims for on this route
	wander float64 // km/h around cruise
	accel  float64 // km/h per second, last tick

	state, stopKind int
	stopLeft        float64 // s
	refuel          bool    // refuelling during this stop
	driveSince      float64 // s driven since the last rest
	restAfter       float64 // s of driving before the next rest

	ignition   bool
	engTemp    float64
	ambient    float64
	odo        float64
	fuel       float64 // %
	load       float64 // 0-1
	pneu       float64 // kPa
	satellites int

	eventRate                      float64 // events of each kind per hour of driving
	brakeLeft, brakeDecel, brakeTo float64
	harshLatch                     bool // a harsh braking not yet in a reading
	speedingLeft, speedingBy       float64
	overheatLeft, overheatTarget   float64
}

// newVehicle returns a vehicle of class (truck, bus, car) at a random point of a random route,
// driving, with the default event rate.
func newVehicle(rng *rand.Rand, class string) *vehicle {
	spec := classSpecs[class]
	if spec == nil {
		spec = classSpecs["car"]
	}
	v := &vehicle{
		rng:        rng,
		spec:       spec,
		dir:        1,
		odo:        rng.Float64() * 500_000,
		fuel:       30 + rng.Float64()*70,
		satellites: 6 + rng.IntN(7),
		ambient:    12 + rng.Float64()*20,
		pneu:       780 + rng.Float64()*50,
		eventRate:  defaultEventRate,
		ignition:   true,
	}
	v.load = spec.loadLo + rng.Float64()*(spec.loadHi-spec.loadLo)
	if rng.Float64() < spec.townShare {
		v.rt = townRoutes[rng.IntN(len(townRoutes))]
		v.cruise = 40 + rng.Float64()*15
	} else {
		v.rt = corridorRoutes[rng.IntN(len(corridorRoutes))]
		v.cruise = spec.cruiseLo + rng.Float64()*(spec.cruiseHi-spec.cruiseLo)
		if rng.IntN(2) == 0 {
			v.dir = -1
		}
	}
	x := rng.Float64() * v.rt.km
	for i, d := range v.rt.seg {
		if x <= d || i == len(v.rt.seg)-1 {
			v.seg, v.pos = i, math.Min(x, d)
			break
		}
		x -= d
	}
	v.speed = rng.Float64() * v.cruise
	v.engTemp = 80 + rng.Float64()*10
	v.restAfter = v.restInterval() * rng.Float64()
	v.place()
	v.alt = v.baseAlt()
	return v
}

func (v *vehicle) restInterval() float64 {
	h := v.spec.restH
	return 3600 * (h[0] + v.rng.Float64()*(h[1]-h[0]))
}

// limit is the speed limit where the vehicle drives.
func (v *vehicle) limit() float64 {
	if v.rt.loop {
		return townLimitKmh
	}
	return v.spec.limit
}

// place sets lat, lon and heading from the route position.
func (v *vehicle) place() {
	rt, i := v.rt, v.seg
	a, b := rt.pts[i], rt.pts[i+1]
	t := 0.0
	if rt.seg[i] > 0 {
		t = v.pos / rt.seg[i]
	}
	v.lat, v.lon = slerpAngle(rt.vec[i], rt.vec[i+1], rt.ang[i], rt.sinAng[i], t)
	v.latE7, v.lonE7 = telemetry.DegreesToE7(v.lat), telemetry.DegreesToE7(v.lon)
	switch {
	case v.dir > 0 && rt.seg[i]-v.pos > 0.001:
		v.heading = bearing(v.lat, v.lon, b.lat, b.lon)
	case v.dir > 0:
		v.heading = math.Mod(bearing(b.lat, b.lon, a.lat, a.lon)+180, 360)
	case v.pos > 0.001:
		v.heading = bearing(v.lat, v.lon, a.lat, a.lon)
	default:
		v.heading = math.Mod(bearing(a.lat, a.lon, b.lat, b.lon)+180, 360)
	}
}

// baseAlt is the altitude interpolated between the segment's waypoints.
func (v *vehicle) baseAlt() float64 {
	rt, i := v.rt, v.seg
	t := 0.0
	if rt.seg[i] > 0 {
		t = v.pos / rt.seg[i]
	}
	return rt.pts[i].alt + (rt.pts[i+1].alt-rt.pts[i].alt)*t
}

// remaining is the distance to the end of a corridor in the direction of travel.
func (v *vehicle) remaining() float64 {
	if v.rt.loop {
		return math.Inf(1)
	}
	at := v.rt.cum[v.seg] + v.pos
	if v.dir > 0 {
		return v.rt.km - at
	}
	return at
}

// advance moves the vehicle dist km along its route.
func (v *vehicle) advance(dist float64) {
	rt := v.rt
	for dist > 0 {
		if v.dir > 0 {
			if rem := rt.seg[v.seg] - v.pos; dist < rem {
				v.pos += dist
				break
			} else {
				dist -= rem
			}
			switch {
			case v.seg+1 < len(rt.seg):
				v.seg, v.pos = v.seg+1, 0
			case rt.loop:
				v.seg, v.pos = 0, 0
			default:
				v.pos, v.atEnd, dist = rt.seg[v.seg], true, 0
			}
		} else {
			if dist < v.pos {
				v.pos -= dist
				break
			}
			dist -= v.pos
			if v.seg > 0 {
				v.seg--
				v.pos = rt.seg[v.seg]
			} else {
				v.pos, v.atEnd, dist = 0, true, 0
			}
		}
	}
}

// beginStop starts braking towards a stop of kind.
func (v *vehicle) beginStop(kind int) {
	v.state, v.stopKind = stopping, kind
	v.speedingLeft = 0
}

// arrive stops the vehicle: ignition off but in traffic, refuelling when needed.
func (v *vehicle) arrive() {
	r, sp := v.rng, v.spec
	v.state, v.speed = stopped, 0
	v.ignition = v.stopKind == stopTraffic
	v.refuel = v.stopKind == stopFuel || (v.stopKind != stopTraffic && v.fuel < 50)
	switch v.stopKind {
	case stopTraffic:
		v.stopLeft = 15 + r.Float64()*105
	case stopRest:
		v.stopLeft = 60 * (sp.restMin[0] + r.Float64()*(sp.restMin[1]-sp.restMin[0]))
	case stopFuel:
		v.stopLeft = 480 + r.Float64()*420
	case stopTerminus:
		v.stopLeft = 600 + r.Float64()*2400
	}
}

// depart ends a stop.
func (v *vehicle) depart() {
	v.state, v.ignition, v.refuel = driving, true, false
	switch v.stopKind {
	case stopRest, stopTerminus, stopFuel:
		v.driveSince, v.restAfter = 0, v.restInterval()
	}
	if v.stopKind == stopTerminus {
		v.dir, v.atEnd = -v.dir, false
		v.load = v.spec.loadLo + v.rng.Float64()*(v.spec.loadHi-v.spec.loadLo)
	}
}

// step advances the vehicle by dt seconds and writes a reading of it into s (all but seq, time
// and sentNs).
func (v *vehicle) step(dt float64, s *sample) {
	// At high rates, readings less than minTick apart sample the same state (with fresh sensor
	// noise): a device taking a million readings a second must not pay for a million ticks.
	v.pending += dt
	if dt = v.pending; dt >= minTick {
		v.pending = 0
		// Ticks of at most a second; a long gap (readings dropped) in at most 600 coarser ones.
		n := max(1, int(math.Ceil(dt-1e-9)))
		n = min(n, 600)
		h := dt / float64(n)
		for range n {
			v.tick(h)
		}
	}
	v.sample(s)
}

// minTick is the shortest time, in seconds, the vehicle's state advances by.
const minTick = 0.01

// tick advances the vehicle by h seconds (at most about one).
func (v *vehicle) tick(h float64) {
	r, sp := v.rng, v.spec
	limit := v.limit()
	chance := func(perHour float64) bool { return r.Float64() < perHour*h/3600 }

	if v.state == stopped {
		v.stopLeft -= h
		if v.refuel {
			v.fuel = math.Min(100, v.fuel+0.4*h)
		}
		if v.stopLeft <= 0 {
			v.depart()
		}
	}

	// The driver's target speed.
	v.wander += -v.wander*h/120 + r.NormFloat64()*0.3*math.Sqrt(h)
	target := math.Max(5, math.Min(limit-1, v.cruise+v.wander))
	if v.speedingLeft > 0 {
		v.speedingLeft -= h
		target = math.Min(sp.top, limit+v.speedingBy)
	}
	if v.state == driving && !v.rt.loop {
		// Brake for the end of the corridor at about 1 m/s².
		if v.remaining() < v.speed*v.speed/(8*3600)+0.02 {
			v.beginStop(stopTerminus)
		}
	}
	if v.state != driving {
		target = 0
	}

	prev := v.speed
	switch {
	case v.state == stopped:
		v.speed = 0
	case v.brakeLeft > 0:
		v.brakeLeft -= h
		v.speed = math.Max(v.brakeTo, v.speed-v.brakeDecel*h)
	default:
		decel := 5.0
		if v.state == stopping {
			decel = 4
		}
		a := math.Max(-decel, math.Min(sp.accel*(1.1-0.3*v.load), (target-v.speed)*0.5))
		v.speed = math.Max(0, v.speed+a*h)
		if v.speedingLeft <= 0 && v.speed > limit && prev <= limit {
			v.speed = limit
		}
	}
	v.speed = math.Min(v.speed, sp.top)
	v.accel = (v.speed - prev) / h

	dist := (prev + v.speed) / 2 * h / 3600 // km
	if dist > 0 {
		v.advance(dist)
		v.place()
		v.odo += dist
		v.altNoise += -v.altNoise*dist/5 + r.NormFloat64()*20*math.Sqrt(dist)
		if v.state == driving {
			v.driveSince += h
		}
	}
	if v.atEnd && v.state != stopped {
		v.stopKind = stopTerminus
		v.arrive()
	} else if v.state == stopping && v.speed < 0.05 {
		v.arrive()
	}
	v.alt = math.Max(-100, math.Min(3500, v.baseAlt()+v.altNoise))

	// Fuel: per km by load, and idling.
	if v.ignition {
		used := dist*sp.lPer100km/100*(0.7+0.5*v.load) + sp.idleLph*h/3600
		v.fuel = math.Max(1, v.fuel-used/sp.tankL*100)
	}

	// Stops and events, while driving.
	if v.state == driving {
		switch {
		case v.fuel < 15:
			v.beginStop(stopFuel)
		case v.driveSince > v.restAfter:
			v.beginStop(stopRest)
		case v.rt.loop && chance(12), !v.rt.loop && chance(1):
			v.beginStop(stopTraffic)
		}
	}
	if v.state == driving && v.eventRate > 0 {
		if v.speed > 40 && v.brakeLeft <= 0 && chance(v.eventRate) {
			v.brakeDecel = 20 + 10*r.Float64()
			v.brakeTo = v.speed * (0.2 + 0.4*r.Float64())
			v.brakeLeft = (v.speed - v.brakeTo) / v.brakeDecel
			v.harshLatch, v.speedingLeft = true, 0
		}
		if v.speed > 30 && v.speedingLeft <= 0 && v.brakeLeft <= 0 && chance(v.eventRate) {
			v.speedingLeft = 60 + 240*r.Float64()
			v.speedingBy = 8 + 17*r.Float64()
		}
	}
	// Overheating is rarer: a fifth of the rate.
	if v.ignition && v.overheatLeft <= 0 && v.eventRate > 0 && chance(v.eventRate/5) {
		v.overheatLeft = 300 + 600*r.Float64()
		v.overheatTarget = 110 + 8*r.Float64()
	}

	// Engine: warms towards 82-95 °C with load and speed (a few minutes), or the fault's
	// temperature; cools to ambient in half an hour once off.
	if v.overheatLeft > 0 {
		v.overheatLeft -= h
	}
	switch {
	case v.ignition && v.overheatLeft > 0:
		v.engTemp += (v.overheatTarget - v.engTemp) * math.Min(1, h/120)
	case v.ignition:
		tgt := 82 + 6*v.load + 5*v.speed/sp.limit + math.Max(0, v.accel)
		v.engTemp += (tgt - v.engTemp) * math.Min(1, h/150)
	default:
		v.engTemp += (v.ambient - v.engTemp) * math.Min(1, h/1800)
	}

	// Air brakes: braking uses air, the compressor refills it while the engine runs, it leaks
	// slowly when parked.
	if sp.airBrakes {
		if v.accel < 0 {
			v.pneu -= -v.accel * h * 1.2
		}
		if v.ignition {
			v.pneu += (830 - v.pneu) * math.Min(1, h/40)
		} else {
			v.pneu -= 0.05 * h
		}
		v.pneu = math.Max(300, math.Min(900, v.pneu))
	}
	if r.Float64() < h/60 {
		v.satellites = max(4, min(14, v.satellites+r.IntN(3)-1))
	}
}

// sample writes the vehicle's reading into s, with sensor noise.
func (v *vehicle) sample(s *sample) {
	r, sp := v.rng, v.spec
	s.latE7, s.lonE7 = v.latE7, v.lonE7
	s.altM = float32(v.alt)
	s.headingDeg = float32(math.Mod(v.heading, 360))
	if s.headingDeg >= 360 || s.headingDeg < 0 {
		s.headingDeg = 0
	}
	s.speedKmh = float32(v.speed)
	s.sats = uint8(v.satellites)
	s.ignition = v.ignition
	s.engTempC = float32(v.engTemp)
	s.fuelPct = float32(math.Max(0, math.Min(100, v.fuel)))
	s.odoKm = v.odo
	if v.ignition {
		rpm := sp.idleRPM + v.speed*sp.rpmPerKmh*(0.9+0.2*v.load) + math.Max(0, v.accel)*60 + r.NormFloat64()*15
		s.rpm = float32(math.Max(0, rpm))
		// Alternator charging: about 2.3 V over a 12 V system's nominal, 4.6 V over a 24 V one.
		s.battV = float32(sp.nominalV*1.19 + r.NormFloat64()*0.05)
		s.battA = float32(-5 - 10*v.speed/sp.top + r.NormFloat64())
	} else {
		s.rpm = 0
		s.battV = float32(sp.nominalV*1.05 + r.NormFloat64()*0.02)
		s.battA = float32(1.5 + r.NormFloat64()*0.2)
	}
	s.hasAirbag = sp.airBrakes
	if sp.airBrakes {
		s.pneuKpa = float32(math.Max(0, v.pneu+r.NormFloat64()*8))
	}
	s.events = 0
	if v.harshLatch || v.brakeLeft > 0 {
		s.events |= evHarshBraking
		v.harshLatch = false
	}
	if v.engTemp > overheatC {
		s.events |= evOverheating
	}
	if v.speed > v.limit() {
		s.events |= evSpeeding
	}
}

// frameReading is a protobuf Reading whose optional fields point into the struct itself, so that
// filling it from a sample allocates nothing.
type frameReading struct {
	r                                                       telemetry.Reading
	lat, lon                                                int32
	alt, heading, speed, temp, rpm, fuel, battV, battA, pne float32
	sats                                                    uint32
	ign                                                     bool
	odo                                                     float64
	extra                                                   map[string]float64
}

func newFrameReading() *frameReading {
	f := &frameReading{}
	r := &f.r
	r.LatE7, r.LonE7, r.AltitudeM, r.HeadingDeg, r.SpeedKmh = &f.lat, &f.lon, &f.alt, &f.heading, &f.speed
	r.Satellites, r.Ignition, r.EngineTempC, r.EngineRpm = &f.sats, &f.ign, &f.temp, &f.rpm
	r.FuelLevelPct, r.OdometerKm, r.BatteryVoltageV, r.BatteryCurrentA = &f.fuel, &f.odo, &f.battV, &f.battA
	return f
}

// fill sets the reading to s.
func (f *frameReading) fill(s *sample) *telemetry.Reading {
	r := &f.r
	r.Seq, r.TimeMs = s.seq, s.timeMs
	f.lat, f.lon, f.alt, f.heading, f.speed = s.latE7, s.lonE7, s.altM, s.headingDeg, s.speedKmh
	f.sats, f.ign, f.temp, f.rpm = uint32(s.sats), s.ignition, s.engTempC, s.rpm
	f.fuel, f.odo, f.battV, f.battA = s.fuelPct, s.odoKm, s.battV, s.battA
	if s.hasAirbag {
		f.pne = s.pneuKpa
		r.PneumaticPressureKpa = &f.pne
	} else {
		r.PneumaticPressureKpa = nil
	}
	r.Extra = nil
	if s.events != 0 {
		if f.extra == nil {
			f.extra = make(map[string]float64, 3)
		}
		clear(f.extra)
		for _, e := range [...]struct {
			bit uint8
			key string
		}{{evHarshBraking, ExtraHarshBraking}, {evOverheating, ExtraOverheating}, {evSpeeding, ExtraSpeeding}} {
			if s.events&e.bit != 0 {
				f.extra[e.key] = 1
			}
		}
		r.Extra = f.extra
	}
	return r
}
