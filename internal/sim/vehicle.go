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
	hasAirbag bool // has air brakes: pneuKpa is present
}

// Southern Africa, where simulated vehicles start and stay.
const (
	minLat, maxLat = -34.5, -17.0
	minLon, maxLon = 15.0, 33.0
)

// vehicle is the physical state that readings sample. Vehicles drive straight from a random start
// and turn back when they would leave the box above; speed wanders around a cruising speed, with
// engine, battery and fuel following it.
type vehicle struct {
	rng        *rand.Rand
	lat, lon   float64 // degrees
	heading    float64 // degrees clockwise from north
	speed      float64 // km/h
	cruise     float64 // km/h the driver aims for
	maxSpeed   float64
	alt        float64
	engTemp    float64
	odo        float64
	fuel       float64
	nominalV   float64 // 12 or 24 V system
	hasAirbag  bool
	idleRPM    float64
	rpmPerKmh  float64
	satellites int
}

// newVehicle returns a vehicle of class (truck, bus, car) at a random place.
func newVehicle(rng *rand.Rand, class string) *vehicle {
	v := &vehicle{
		rng:        rng,
		lat:        minLat + rng.Float64()*(maxLat-minLat),
		lon:        minLon + rng.Float64()*(maxLon-minLon),
		heading:    rng.Float64() * 360,
		alt:        200 + rng.Float64()*1500,
		engTemp:    20 + rng.Float64()*10,
		odo:        rng.Float64() * 500_000,
		fuel:       30 + rng.Float64()*70,
		satellites: 6 + rng.IntN(7),
	}
	switch class {
	case "truck":
		v.maxSpeed, v.nominalV, v.hasAirbag, v.idleRPM, v.rpmPerKmh = 100, 24, true, 600, 16
	case "bus":
		v.maxSpeed, v.nominalV, v.hasAirbag, v.idleRPM, v.rpmPerKmh = 90, 24, true, 650, 18
	default:
		v.maxSpeed, v.nominalV, v.idleRPM, v.rpmPerKmh = 130, 12, 800, 22
	}
	v.cruise = v.maxSpeed * (0.6 + 0.3*rng.Float64())
	return v
}

// step advances the vehicle by dt seconds and writes a reading of it into s (all but seq, time
// and sentNs).
func (v *vehicle) step(dt float64, s *sample) {
	r := v.rng
	// Now and then the driver picks a new cruising speed, sometimes a stop.
	if r.Float64() < dt/120 {
		if r.Float64() < 0.2 {
			v.cruise = 0
		} else {
			v.cruise = v.maxSpeed * (0.5 + 0.45*r.Float64())
		}
	}
	accel := math.Max(-8, math.Min(4, (v.cruise-v.speed)*0.2)) // km/h per second
	v.speed = math.Max(0, math.Min(v.maxSpeed, v.speed+accel*dt+r.NormFloat64()*0.5*math.Sqrt(dt)))
	dist := v.speed * dt / 3600 // km
	const kmPerDegLat = 111.32
	rad := v.heading * math.Pi / 180
	nlat := v.lat + dist*math.Cos(rad)/kmPerDegLat
	nlon := v.lon + dist*math.Sin(rad)/(kmPerDegLat*math.Cos(v.lat*math.Pi/180))
	if nlat < minLat || nlat > maxLat || nlon < minLon || nlon > maxLon {
		v.heading = math.Mod(v.heading+180, 360) // turn back rather than leave the region
	} else {
		v.lat, v.lon = nlat, nlon
	}
	v.odo += dist
	v.fuel = math.Max(5, v.fuel-dist*0.02)
	if v.fuel <= 5 {
		v.fuel = 100 // refuelled
	}
	v.alt = math.Max(0, math.Min(2500, v.alt+r.NormFloat64()*0.3*math.Sqrt(dt)+dist*(r.Float64()-0.5)*5))
	// The coolant warms towards 85-95 °C with load, with a time constant of a few minutes.
	target := 85 + 10*v.speed/v.maxSpeed
	v.engTemp += (target - v.engTemp) * math.Min(1, dt/180)
	if r.Float64() < dt/60 {
		v.satellites = max(4, min(14, v.satellites+r.IntN(3)-1))
	}

	s.latE7, s.lonE7 = telemetry.DegreesToE7(v.lat), telemetry.DegreesToE7(v.lon)
	s.altM = float32(v.alt)
	s.headingDeg = float32(math.Mod(v.heading, 360))
	if s.headingDeg >= 360 {
		s.headingDeg = 0
	}
	s.speedKmh = float32(v.speed)
	s.sats = uint8(v.satellites)
	s.ignition = true
	s.engTempC = float32(v.engTemp)
	s.rpm = float32(v.idleRPM + v.speed*v.rpmPerKmh + r.NormFloat64()*15)
	s.fuelPct = float32(v.fuel)
	s.odoKm = v.odo
	// Alternator charging: about 2.3 V over a 12 V system's nominal, 4.6 V over a 24 V one.
	s.battV = float32(v.nominalV*1.19 + r.NormFloat64()*0.05)
	s.battA = float32(-5 - 10*v.speed/v.maxSpeed + r.NormFloat64())
	s.hasAirbag = v.hasAirbag
	if v.hasAirbag {
		s.pneuKpa = float32(800 + r.NormFloat64()*15)
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
	return r
}
