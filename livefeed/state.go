package livefeed

import (
	"hash/maphash"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/drover-telemetry/drover/telemetry"
)

// Bits of vehicle.has: which optional values the vehicle has reported.
const (
	hasPos uint16 = 1 << iota
	hasAlt
	hasSpeed
	hasHeading
	hasEngineTemp
	hasRPM
	hasBattery
	hasFuel
	hasIgnition
	hasOdometer
)

// vehicle is the latest known state of one vehicle. A value is immutable once
// stored: an update makes a new one, so that the writers of many clients can
// hold and send it without locks. Its JSON form is encoded once, when it is
// made, and shared by every client it goes to.
type vehicle struct {
	id, fleet, class, region string

	seq    uint64 // of the newest reading applied
	timeMs int64  // device time of the newest reading applied
	recvMs int64  // when the frontend received that reading
	posMs  int64  // device time of the newest reading that had a position

	latE7, lonE7 int32
	has          uint16
	ignition     bool
	alt, speed   float32
	heading      float32
	engineTemp   float32
	rpm          float32
	battery      float32
	fuel         float32
	odometer     float64

	// ingestNs is when the livefeed applied the reading (Unix ns), for the
	// send delay metric.
	ingestNs int64
	// json is the vehicle as clients see it (docs/live-api.md).
	json []byte
}

// newer reports whether a reading taken at timeMs with seq is newer than the
// state v holds: a later device time, or the same time with a higher seq.
// Anything else (older, or a duplicate) must not move the vehicle.
func (v *vehicle) newer(timeMs int64, seq uint64) bool {
	if timeMs != v.timeMs {
		return timeMs > v.timeMs
	}
	return seq > v.seq
}

// olderOrSame reports whether v is not newer than w (same vehicle).
func (v *vehicle) olderOrSame(w *vehicle) bool { return !w.newer(v.timeMs, v.seq) }

// merge returns the state after applying rec to old (nil for a vehicle not
// seen before). Values the reading does not carry keep their last known
// value: a device that sends its fuel level every minute still shows it in
// between. Identity and enrichment come from rec.
func merge(old *vehicle, rec *telemetry.EnrichedRecord, ingestNs int64) *vehicle {
	r := rec.GetRecord()
	rd := r.GetReading()
	e := rec.GetEnrichment()
	v := &vehicle{}
	if old != nil {
		*v = *old
		v.json = nil
	}
	v.id = r.GetDeviceId()
	v.fleet, v.class, v.region = e.GetFleet(), e.GetVehicleClass(), e.GetRegion()
	v.seq, v.timeMs, v.recvMs, v.ingestNs = rd.GetSeq(), rd.GetTimeMs(), r.GetReceivedMs(), ingestNs
	if rd.LatE7 != nil && rd.LonE7 != nil {
		v.latE7, v.lonE7, v.posMs = rd.GetLatE7(), rd.GetLonE7(), rd.GetTimeMs()
		v.has |= hasPos
	}
	setF := func(p *float32, bit uint16, dst *float32) {
		if p != nil && !math.IsNaN(float64(*p)) && !math.IsInf(float64(*p), 0) {
			*dst = *p
			v.has |= bit
		}
	}
	setF(rd.AltitudeM, hasAlt, &v.alt)
	setF(rd.SpeedKmh, hasSpeed, &v.speed)
	setF(rd.HeadingDeg, hasHeading, &v.heading)
	setF(rd.EngineTempC, hasEngineTemp, &v.engineTemp)
	setF(rd.EngineRpm, hasRPM, &v.rpm)
	setF(rd.BatteryVoltageV, hasBattery, &v.battery)
	setF(rd.FuelLevelPct, hasFuel, &v.fuel)
	if rd.Ignition != nil {
		v.ignition = *rd.Ignition
		v.has |= hasIgnition
	}
	if rd.OdometerKm != nil && !math.IsNaN(*rd.OdometerKm) && !math.IsInf(*rd.OdometerKm, 0) {
		v.odometer = *rd.OdometerKm
		v.has |= hasOdometer
	}
	v.json = v.appendJSON(make([]byte, 0, 320))
	return v
}

// appendJSON appends the vehicle's JSON object (docs/live-api.md, "Vehicle").
// Hand-written rather than encoding/json: it runs once per update on the
// ingest path, and fields that were never reported are left out.
func (v *vehicle) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, v.id)
	b = append(b, `,"fleet":`...)
	b = appendString(b, v.fleet)
	if v.class != "" {
		b = append(b, `,"class":`...)
		b = appendString(b, v.class)
	}
	if v.region != "" {
		b = append(b, `,"region":`...)
		b = appendString(b, v.region)
	}
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, v.seq, 10)
	b = append(b, `,"time_ms":`...)
	b = strconv.AppendInt(b, v.timeMs, 10)
	b = append(b, `,"recv_ms":`...)
	b = strconv.AppendInt(b, v.recvMs, 10)
	if v.has&hasPos != 0 {
		b = append(b, `,"lat":`...)
		b = strconv.AppendFloat(b, float64(v.latE7)/1e7, 'f', -1, 64)
		b = append(b, `,"lon":`...)
		b = strconv.AppendFloat(b, float64(v.lonE7)/1e7, 'f', -1, 64)
		if v.posMs != v.timeMs {
			b = append(b, `,"pos_ms":`...)
			b = strconv.AppendInt(b, v.posMs, 10)
		}
	}
	f := func(name string, bit uint16, x float32) {
		if v.has&bit != 0 {
			b = append(b, name...)
			b = strconv.AppendFloat(b, float64(x), 'f', -1, 32)
		}
	}
	f(`,"alt_m":`, hasAlt, v.alt)
	f(`,"speed_kmh":`, hasSpeed, v.speed)
	f(`,"heading_deg":`, hasHeading, v.heading)
	f(`,"engine_temp_c":`, hasEngineTemp, v.engineTemp)
	f(`,"engine_rpm":`, hasRPM, v.rpm)
	f(`,"battery_v":`, hasBattery, v.battery)
	f(`,"fuel_pct":`, hasFuel, v.fuel)
	if v.has&hasIgnition != 0 {
		b = append(b, `,"ignition":`...)
		b = strconv.AppendBool(b, v.ignition)
	}
	if v.has&hasOdometer != 0 {
		b = append(b, `,"odometer_km":`...)
		b = strconv.AppendFloat(b, v.odometer, 'f', -1, 64)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does; <, > and & are escaped so that the JSON is safe to put
// in HTML.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c >= 0x20 && c != '<' && c != '>' && c != '&':
				b = append(b, c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// change is one vehicle whose state changed, as it is dispatched to clients.
type change struct {
	v   *vehicle // the new state; for a removal, the last one
	old *vehicle // the state before, nil if new
	// gone: the vehicle was forgotten (VehicleTTL); clients that show it
	// are told to remove it.
	gone bool
}

// storeShards spreads vehicles over independently locked maps so that
// ingest from several routers and snapshots do not wait on one lock.
const storeShards = 32

// store holds the latest state of every vehicle.
type store struct {
	seed   maphash.Seed
	shards [storeShards]shard

	fmu    sync.Mutex
	fleets map[string]int // vehicles per fleet
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*vehicle
}

func newStore() *store {
	s := &store{seed: maphash.MakeSeed(), fleets: make(map[string]int)}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*vehicle)
	}
	return s
}

func (s *store) shard(id string) *shard {
	return &s.shards[maphash.String(s.seed, id)%storeShards]
}

// apply applies one record and returns the change, or ok false when the
// reading is not newer than the state (out of order, or a duplicate).
func (s *store) apply(rec *telemetry.EnrichedRecord, ingestNs int64) (c change, ok bool) {
	id := rec.GetRecord().GetDeviceId()
	rd := rec.GetRecord().GetReading()
	sh := s.shard(id)
	sh.mu.Lock()
	old := sh.m[id]
	if old != nil && !old.newer(rd.GetTimeMs(), rd.GetSeq()) {
		sh.mu.Unlock()
		return change{}, false
	}
	v := merge(old, rec, ingestNs)
	sh.m[id] = v
	sh.mu.Unlock()
	if old == nil || old.fleet != v.fleet {
		s.fmu.Lock()
		if old != nil {
			s.countFleet(old.fleet, -1)
		}
		s.countFleet(v.fleet, +1)
		s.fmu.Unlock()
	}
	return change{v: v, old: old}, true
}

func (s *store) countFleet(fleet string, d int) {
	if n := s.fleets[fleet] + d; n > 0 {
		s.fleets[fleet] = n
	} else {
		delete(s.fleets, fleet)
	}
}

// get returns the state of one vehicle.
func (s *store) get(id string) *vehicle {
	sh := s.shard(id)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.m[id]
}

// len returns the number of vehicles.
func (s *store) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// knownFleets returns the fleets that have vehicles now, sorted.
func (s *store) knownFleets() []string {
	s.fmu.Lock()
	out := make([]string, 0, len(s.fleets))
	for f := range s.fleets {
		out = append(out, f)
	}
	s.fmu.Unlock()
	slices.Sort(out)
	return out
}

// each calls fn for every vehicle until fn returns false. It holds one
// shard's read lock at a time, so it never stops ingest for long; a
// vehicle updated during the walk is seen in either state.
func (s *store) each(fn func(*vehicle) bool) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, v := range sh.m {
			if !fn(v) {
				sh.mu.RUnlock()
				return
			}
		}
		sh.mu.RUnlock()
	}
}

// expire forgets the vehicles whose last reading arrived (ingestNs) before
// cutoffNs and returns them as removals.
func (s *store) expire(cutoffNs int64) []change {
	var out []change
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for id, v := range sh.m {
			if v.ingestNs < cutoffNs {
				delete(sh.m, id)
				out = append(out, change{v: v, gone: true})
			}
		}
		sh.mu.Unlock()
	}
	if len(out) > 0 {
		s.fmu.Lock()
		for _, c := range out {
			s.countFleet(c.v.fleet, -1)
		}
		s.fmu.Unlock()
	}
	return out
}

// remove forgets the vehicles of ids (those it holds) and returns them as
// removals.
func (s *store) remove(ids []string) []change {
	var out []change
	for _, id := range ids {
		sh := s.shard(id)
		sh.mu.Lock()
		if v, ok := sh.m[id]; ok {
			delete(sh.m, id)
			out = append(out, change{v: v, gone: true})
		}
		sh.mu.Unlock()
	}
	if len(out) > 0 {
		s.fmu.Lock()
		for _, c := range out {
			s.countFleet(c.v.fleet, -1)
		}
		s.fmu.Unlock()
	}
	return out
}
