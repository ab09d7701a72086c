package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/telemetry"
)

// Script is a scripted trip: every device of a scripted fleet drives it,
// leg after leg, instead of the random journeys of the vehicle model, so
// that the alerts it must raise are known (docs/simulator.md, "Scripted
// trips"; the alert engine's end-to-end test). Time is the device's: one
// reading per 1/Rate seconds of it.
type Script struct {
	// Start is where the trip starts, [lat, lon] in degrees.
	Start [2]float64 `json:"start"`
	// Class is the vehicle class the readings look like (truck: air brakes,
	// 24 V).
	Class string `json:"class,omitempty"`
	Legs  []Leg  `json:"legs"`
}

// Leg kinds.
const (
	// LegDrive drives at SpeedKmh towards HeadingDeg.
	LegDrive = "drive"
	// LegStop stands still, the ignition on (idling) or off (Ignition).
	LegStop = "stop"
	// LegSilent takes no reading at all: the device is off.
	LegSilent = "silent"
)

// Leg is one part of a scripted trip.
type Leg struct {
	Do      string  `json:"do"`
	Seconds float64 `json:"seconds"`
	// Drive: the direction and the speed, reached at AccelKmhS km/h a
	// second (default 3), or at once when Sudden.
	HeadingDeg float64 `json:"heading_deg,omitempty"`
	SpeedKmh   float64 `json:"speed_kmh,omitempty"`
	AccelKmhS  float64 `json:"accel_kmh_s,omitempty"`
	Sudden     bool    `json:"sudden,omitempty"`
	// BrakeTo, when set, ends a drive leg braking to this speed in one
	// second: a harsh braking.
	BrakeTo *float64 `json:"brake_to_kmh,omitempty"`
	// Stop: the ignition (default on: idling).
	Ignition *bool `json:"ignition,omitempty"`
	// EngineTempC, when set, is the engine's temperature during the leg
	// (an overheat); else it stays at 88 °C while the engine runs.
	EngineTempC float64 `json:"engine_temp_c,omitempty"`
}

// LoadScript reads a script file (JSON) and checks it.
func LoadScript(path string) (*Script, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Script
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("script %s: %w", path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("script %s: %w", path, err)
	}
	return &s, nil
}

// Validate checks the script.
func (s *Script) Validate() error {
	if len(s.Legs) == 0 {
		return errors.New("no legs")
	}
	if math.Abs(s.Start[0]) > 90 || math.Abs(s.Start[1]) > 180 {
		return fmt.Errorf("start %v: out of range", s.Start)
	}
	for i, l := range s.Legs {
		switch l.Do {
		case LegDrive, LegStop, LegSilent:
		default:
			return fmt.Errorf("leg %d: do %q, want drive, stop or silent", i, l.Do)
		}
		if l.Seconds <= 0 || l.SpeedKmh < 0 || l.SpeedKmh > 300 {
			return fmt.Errorf("leg %d: seconds must be positive and speed_kmh within 0-300", i)
		}
	}
	return nil
}

// Duration is the trip's length in device time, seconds.
func (s *Script) Duration() float64 {
	var d float64
	for _, l := range s.Legs {
		d += l.Seconds
	}
	return d
}

// scripted is a vehicle that drives a Script.
type scripted struct {
	s        *Script
	spec     *classSpec
	t        float64 // seconds into the trip
	lat, lon float64
	speed    float64
	heading  float64
	odo      float64
}

func newScripted(s *Script) *scripted {
	spec := classSpecs[s.Class]
	if spec == nil {
		spec = classSpecs["truck"]
	}
	return &scripted{s: s, spec: spec, lat: s.Start[0], lon: s.Start[1]}
}

// leg returns the leg at trip time t, and how far into it; past the end,
// the last leg goes on.
func (v *scripted) leg(t float64) (*Leg, float64) {
	for i := range v.s.Legs {
		l := &v.s.Legs[i]
		if t < l.Seconds {
			return l, t
		}
		t -= l.Seconds
	}
	l := &v.s.Legs[len(v.s.Legs)-1]
	return l, l.Seconds
}

func accel(l *Leg) float64 {
	if l.AccelKmhS > 0 {
		return l.AccelKmhS
	}
	return 3
}

// ScriptReadings are the readings a device driving sc takes at rate per
// second, the first at start + 1/rate, seqs from 1: what an offline
// evaluation of a scripted trip works on.
func ScriptReadings(sc *Script, rate float64, start time.Time) []*telemetry.Reading {
	v := newScripted(sc)
	dt := 1 / rate
	var out []*telemetry.Reading
	f := newFrameReading()
	for k := 1; float64(k)*dt <= sc.Duration(); k++ {
		if v.silentNext(dt) {
			continue
		}
		var s sample
		v.step(dt, &s)
		s.seq = uint64(len(out) + 1)
		s.timeMs = start.Add(time.Duration(float64(k) * dt * float64(time.Second))).UnixMilli()
		r := proto.Clone(f.fill(&s)).(*telemetry.Reading)
		out = append(out, r)
	}
	return out
}

// silentNext reports whether the next reading, dt seconds on, falls in a
// silent leg: then no reading is taken (time passes all the same).
func (v *scripted) silentNext(dt float64) bool {
	l, _ := v.leg(v.t + dt)
	if l.Do != LegSilent {
		return false
	}
	v.t += dt
	return true
}

// step advances the trip by dt seconds and writes the reading.
func (v *scripted) step(dt float64, s *sample) {
	v.t += dt
	l, into := v.leg(v.t)
	target := 0.0
	if l.Do == LegDrive {
		target = l.SpeedKmh
		v.heading = l.HeadingDeg
		if l.BrakeTo != nil && into >= l.Seconds-1 {
			target = *l.BrakeTo
			v.speed = target // a second of hard braking
		}
	}
	switch {
	case l.Do != LegDrive:
		v.speed = 0
	case l.Sudden || (l.BrakeTo != nil && into >= l.Seconds-1):
		v.speed = target
	case v.speed < target:
		v.speed = math.Min(target, v.speed+accel(l)*dt)
	default:
		v.speed = math.Max(target, v.speed-accel(l)*dt)
	}
	if d := v.speed / 3.6 * dt; d > 0 {
		φ := v.heading * math.Pi / 180
		v.lat += d * math.Cos(φ) / 111_320
		v.lon += d * math.Sin(φ) / (111_320 * math.Cos(v.lat*math.Pi/180))
		v.odo += d / 1000
	}
	ign := l.Do == LegDrive || l.Ignition == nil || *l.Ignition
	s.latE7, s.lonE7 = telemetry.DegreesToE7(v.lat), telemetry.DegreesToE7(v.lon)
	s.headingDeg, s.speedKmh, s.ignition = float32(v.heading), float32(v.speed), ign
	s.sats, s.odoKm, s.fuelPct, s.altM = 10, v.odo, 50, 1500
	s.engTempC, s.rpm = 30, 0
	s.battV, s.battA = float32(v.spec.nominalV*1.05), 1
	if ign {
		s.engTempC = 88
		if l.EngineTempC > 0 {
			s.engTempC = float32(l.EngineTempC)
		}
		s.rpm = float32(v.spec.idleRPM + v.speed*v.spec.rpmPerKmh)
		s.battV, s.battA = float32(v.spec.nominalV*1.15), -5
	}
	s.hasAirbag = v.spec.airBrakes
	s.pneuKpa = 800
	s.events = 0
}
