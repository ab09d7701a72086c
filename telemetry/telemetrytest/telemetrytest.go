// Package telemetrytest generates records for the tests of what stores
// them: readings, device ids and labels that telemetry's validation accepts,
// drawn from the edges of every range it allows. A sink must store every one
// of them unchanged (a reading acked at the frontend and refused by a sink
// would be lost), so its tests write many of these to the real thing.
package telemetrytest

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// Edge draws records at the edges of what validation accepts. It is not
// safe for concurrent use.
type Edge struct {
	rng *rand.Rand
	n   int // records drawn, to make device ids unique
}

// NewEdge returns a generator seeded with seed: the same seed draws the same
// records.
func NewEdge(seed uint64) *Edge {
	return &Edge{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Record draws an enriched record with a unique device id, as a router
// publishes it: the reading is valid at its own time (the frontend's clock
// window is what it is; what the sinks must take are the absolute bounds),
// the device id and labels are valid, and received_ms is a plausible
// server time.
func (g *Edge) Record() *telemetry.EnrichedRecord {
	g.n++
	seq := g.Seq()
	return &telemetry.EnrichedRecord{
		Record: &telemetry.Record{
			DeviceId:   g.DeviceID(),
			ReceivedMs: time.Now().UnixMilli() - g.rng.Int64N(1000),
			Reading:    g.Reading(seq, g.TimeMs()),
		},
		Enrichment: &telemetry.Enrichment{Fleet: g.Label(), VehicleClass: g.Label(), Region: g.Label()},
	}
}

// pick returns one of vs.
func pick[T any](g *Edge, vs ...T) T { return vs[g.rng.IntN(len(vs))] }

// Seq draws a seq: 1, 2^63-1, its neighbours, multiples and neighbours of
// 10^6 (the InfluxDB writer adds seq mod 10^6 to the timestamp), or any.
func (g *Edge) Seq() uint64 {
	switch g.rng.IntN(4) {
	case 0:
		return pick(g, uint64(1), 2, telemetry.MaxSeq, telemetry.MaxSeq-1, 999_999, 1_000_000, 1_000_001)
	case 1:
		return g.rng.Uint64N(telemetry.MaxSeq) + 1
	default:
		return g.rng.Uint64N(1_000_000_000) + 1
	}
}

// TimeMs draws a time_ms: the absolute bounds and their neighbours, around
// the Unix epoch (0 is "missing"), or any.
func (g *Edge) TimeMs() int64 {
	switch g.rng.IntN(3) {
	case 0:
		return pick(g, int64(telemetry.MinTimeMs), telemetry.MinTimeMs+1, telemetry.MaxTimeMs, telemetry.MaxTimeMs-1,
			-1, 1, time.Now().UnixMilli())
	case 1:
		return telemetry.MinTimeMs + g.rng.Int64N(telemetry.MaxTimeMs-telemetry.MinTimeMs)
	default:
		return time.Now().Add(-time.Duration(g.rng.Int64N(int64(30 * 24 * time.Hour)))).UnixMilli()
	}
}

// idBytes and keyRunes are what device ids and extra keys are drawn from.
const (
	idBytes  = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:"
	idFirst  = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	keyRunes = "aZ09._-: ,=\"'#/{}[]()*+?!@$%^&|~`<>;éü東京€\u00a0"
)

// DeviceID draws a device id of 1 to 128 bytes, made unique by the number
// of records drawn so far.
func (g *Edge) DeviceID() string {
	suffix := strconv.Itoa(g.n)
	n := pick(g, 0, 1, 10, telemetry.MaxDeviceIDLen-len(suffix)-1)
	var b strings.Builder
	b.WriteByte(idFirst[g.rng.IntN(len(idFirst))])
	for range n {
		b.WriteByte(idBytes[g.rng.IntN(len(idBytes))])
	}
	b.WriteString(suffix)
	return b.String()
}

// Label draws a label: empty, short, full length, with the characters an
// InfluxDB tag must escape (space, comma, '=') and non-ASCII.
func (g *Edge) Label() string {
	switch g.rng.IntN(4) {
	case 0:
		return ""
	case 1:
		return pick(g, "acme", "Acme Haulage, JHB", "a=b", " lead", "trail ", "Île-de-France", `"q"`, "a/b")
	default:
		return g.text(1 + g.rng.IntN(telemetry.MaxLabelLen))
	}
}

// text draws up to max bytes of keyRunes (at least one rune).
func (g *Edge) text(max int) string {
	runes := []rune(keyRunes)
	var b strings.Builder
	for {
		r := runes[g.rng.IntN(len(runes))]
		if b.Len() > 0 && b.Len()+len(string(r)) > max {
			return b.String()
		}
		b.WriteRune(r)
		if b.Len() >= max {
			return b.String()
		}
	}
}

// Reading draws a reading with seq and timeMs: each sensor absent, or at a
// bound of its range, just inside one, 0 (or -0) where allowed, or any
// value within; and 0 to 32 extras with keys of 1 to 64 bytes and values
// from the whole finite double range.
func (g *Edge) Reading(seq uint64, timeMs int64) *telemetry.Reading {
	r := &telemetry.Reading{Seq: seq, TimeMs: timeMs}
	if g.rng.IntN(4) > 0 {
		lat := g.int32In(telemetry.MinLatE7, telemetry.MaxLatE7)
		lon := g.int32In(telemetry.MinLonE7, telemetry.MaxLonE7)
		r.LatE7, r.LonE7 = &lat, &lon
	}
	r.AltitudeM = g.float32In(telemetry.MinAltitudeM, telemetry.MaxAltitudeM)
	r.HeadingDeg = g.float32In(0, math.Nextafter32(telemetry.MaxHeadingDeg, 0))
	r.SpeedKmh = g.float32In(0, telemetry.MaxSpeedKmh)
	if g.rng.IntN(4) > 0 {
		s := uint32(pick(g, 0, 1, telemetry.MaxSatellites, g.rng.IntN(telemetry.MaxSatellites+1)))
		r.Satellites = &s
	}
	if g.rng.IntN(4) > 0 {
		b := g.rng.IntN(2) == 0
		r.Ignition = &b
	}
	r.EngineTempC = g.float32In(telemetry.MinEngineTempC, telemetry.MaxEngineTempC)
	r.EngineRpm = g.float32In(0, telemetry.MaxEngineRPM)
	r.FuelLevelPct = g.float32In(0, telemetry.MaxFuelPct)
	if g.rng.IntN(4) > 0 {
		v := pick(g, 0, math.Copysign(0, -1), telemetry.MaxOdometerKm, math.Nextafter(telemetry.MaxOdometerKm, 0),
			math.SmallestNonzeroFloat64, g.rng.Float64()*telemetry.MaxOdometerKm)
		r.OdometerKm = &v
	}
	r.BatteryVoltageV = g.float32In(0, telemetry.MaxBatteryV)
	r.BatteryCurrentA = g.float32In(-telemetry.MaxBatteryAbsA, telemetry.MaxBatteryAbsA)
	r.PneumaticPressureKpa = g.float32In(0, telemetry.MaxPneumaticKpa)
	if n := pick(g, 0, 0, 1, 3, telemetry.DefaultLimits().MaxExtra); n > 0 {
		r.Extra = make(map[string]float64, n)
		for len(r.Extra) < n {
			r.Extra[g.extraKey()] = g.extraValue()
		}
	}
	return r
}

// extraKey draws a key of 1 to 64 bytes.
func (g *Edge) extraKey() string {
	if g.rng.IntN(3) == 0 {
		return pick(g, "k", "tyre_fl_kpa", "tyre.fl-kpa", "a b", "a,b", "a=b", "x", "time", "seq", "_x", "-x", " ")
	}
	return g.text(1 + g.rng.IntN(telemetry.DefaultLimits().MaxExtraKeyLen))
}

// extraValue draws from the whole finite range of a double.
func (g *Edge) extraValue() float64 {
	return pick(g, 0, math.Copysign(0, -1), math.MaxFloat64, -math.MaxFloat64, math.SmallestNonzeroFloat64,
		-math.SmallestNonzeroFloat64, 0x1p-1022, 1e300, -1e-300, 9007199254740993, g.rng.NormFloat64()*1e6,
		math.Float64frombits(g.rng.Uint64()&^(0x7ff<<52)|uint64(g.rng.IntN(0x7ff))<<52))
}

// int32In draws from [lo, hi]: a bound, a neighbour, 0 if within, or any.
func (g *Edge) int32In(lo, hi int32) int32 {
	vs := []int32{lo, hi, lo + 1, hi - 1, int32(int64(lo) + g.rng.Int64N(int64(hi)-int64(lo)+1))}
	if lo <= 0 && 0 <= hi {
		vs = append(vs, 0)
	}
	return pick(g, vs...)
}

// float32In draws nil (absent), or from [lo, hi]: a bound, the float32 just
// inside it, 0 or -0 if within, or any.
func (g *Edge) float32In(lo, hi float32) *float32 {
	if g.rng.IntN(5) == 0 {
		return nil
	}
	vs := []float32{lo, hi, math.Nextafter32(lo, hi), math.Nextafter32(hi, lo), lo + g.rng.Float32()*(hi-lo)}
	if lo <= 0 && 0 <= hi {
		vs = append(vs, 0, float32(math.Copysign(0, -1)), math.SmallestNonzeroFloat32)
	}
	v := pick(g, vs...)
	return &v
}
