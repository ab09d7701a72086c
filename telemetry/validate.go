package telemetry

import (
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Limits bounds what a device frame may contain. A field ≤ 0 takes its value from DefaultLimits,
// so Limits{MaxFrameBytes: 1 << 20} changes only the frame size.
type Limits struct {
	// MaxFrameBytes is the largest encoded frame accepted, in bytes (binary or JSON).
	MaxFrameBytes int
	// MaxReadingsPerFrame is the most readings one frame may carry.
	MaxReadingsPerFrame int
	// MaxExtra is the most entries a reading's extra map may have.
	MaxExtra int
	// MaxExtraKeyLen is the longest extra key, in bytes. Values above MaxExtraKeyLenCap are
	// taken as MaxExtraKeyLenCap.
	MaxExtraKeyLen int
	// MaxFutureSkew is how far ahead of the server clock a reading's time may be.
	MaxFutureSkew time.Duration
	// MaxAge is how far behind the server clock a reading's time may be. Devices store and
	// forward, so readings taken while a vehicle was out of coverage arrive days late.
	MaxAge time.Duration
}

// DefaultLimits returns the limits drover applies unless configured otherwise: 64 KiB frames of
// at most 1000 readings, 32 extras per reading with keys of at most 64 bytes, readings at most
// 5 minutes ahead of the server clock and at most 30 days old.
func DefaultLimits() Limits {
	return Limits{
		MaxFrameBytes:       64 << 10,
		MaxReadingsPerFrame: 1000,
		MaxExtra:            32,
		MaxExtraKeyLen:      64,
		MaxFutureSkew:       5 * time.Minute,
		MaxAge:              30 * 24 * time.Hour,
	}
}

// withDefaults fills every field ≤ 0 from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxFrameBytes <= 0 {
		l.MaxFrameBytes = d.MaxFrameBytes
	}
	if l.MaxReadingsPerFrame <= 0 {
		l.MaxReadingsPerFrame = d.MaxReadingsPerFrame
	}
	if l.MaxExtra <= 0 {
		l.MaxExtra = d.MaxExtra
	}
	if l.MaxExtraKeyLen <= 0 {
		l.MaxExtraKeyLen = d.MaxExtraKeyLen
	}
	l.MaxExtraKeyLen = min(l.MaxExtraKeyLen, MaxExtraKeyLenCap)
	if l.MaxFutureSkew <= 0 {
		l.MaxFutureSkew = d.MaxFutureSkew
	}
	if l.MaxAge <= 0 {
		l.MaxAge = d.MaxAge
	}
	return l
}

// Physical ranges of the sensor fields, inclusive unless noted. They are wide on purpose: they
// refuse what cannot be a real measurement (a unit mix-up, a corrupt sensor, garbage), not what
// is merely unusual.
const (
	MinLatE7        = -90_0000000  // lowest latitude, -90°, in degrees × 1e7
	MaxLatE7        = 90_0000000   // highest latitude, 90°, in degrees × 1e7
	MinLonE7        = -180_0000000 // lowest longitude, -180°, in degrees × 1e7
	MaxLonE7        = 180_0000000  // highest longitude, 180°, in degrees × 1e7
	MinAltitudeM    = -1000        // lowest altitude, m: below the Dead Sea shore (-430 m), with GNSS error
	MaxAltitudeM    = 10000        // highest altitude, m: above the highest road (~5,800 m)
	MaxHeadingDeg   = 360          // heading is in [0, 360): 360 itself is refused (it is 0)
	MaxSpeedKmh     = 400          // highest speed, km/h; speed is in [0, 400]
	MaxSatellites   = 64           // most satellites used in a fix
	MinEngineTempC  = -60          // lowest engine temperature, °C: a cold start in Siberia
	MaxEngineTempC  = 200          // highest engine temperature, °C: past any coolant's boiling point
	MaxEngineRPM    = 20000        // highest engine speed, rpm; rpm is in [0, 20000]
	MaxPneumaticKpa = 2500         // highest air pressure, kPa (air brakes run at ~800); in [0, 2500]
	MaxBatteryV     = 1500         // highest battery voltage, V (12/24 V, traction packs up to 1,000+ V); in [0, 1500]
	MaxBatteryAbsA  = 3000         // largest battery current, A, either sign (megawatt charging); in [-3000, 3000]
	MaxOdometerKm   = 100_000_000  // highest odometer, km; in [0, 1e8]
	MaxFuelPct      = 100          // highest fuel level, %; in [0, 100]
)

// What every sink can store, whatever the Limits. A reading that passes validation is never
// refused by a sink (docs/wire-format.md, "What is refused, and why"): these bounds are the
// sinks' own, narrowed where drover's encoding narrows them.
const (
	// MaxSeq is the largest seq: InfluxDB's integers and the lake's seq column are signed
	// 64-bit, so seq is in [1, 2^63-1] although the wire type is uint64.
	MaxSeq = math.MaxInt64
	// MinTimeMs is the earliest time_ms, 1677-09-21T00:12:43.146Z. The InfluxDB writer
	// stores a reading at time_ms × 10^6 + seq mod 10^6 nanoseconds, and InfluxDB takes
	// timestamps in ±(2^63 − 2) ns; the lake takes years 1 to 9999.
	MinTimeMs = -9_223_372_036_854
	// MaxTimeMs is the latest time_ms, 2262-04-11T23:47:16.853Z (see MinTimeMs).
	MaxTimeMs = 9_223_372_036_853
	// MaxExtraKeyLenCap is the most Limits.MaxExtraKeyLen can be: an InfluxDB point's
	// series key and field key together are at most 65,535 bytes.
	MaxExtraKeyLenCap = 1024
)

// ValidateReading checks one reading against the rules DecodeUplink applies to every reading of
// a frame (all but the order of seqs, a frame-level rule). now is the server's clock. It returns
// nil or a *FrameError whose Index is -1.
func ValidateReading(r *Reading, now time.Time, lim Limits) error {
	if fe := validateReading(r, -1, now.UnixMilli(), lim.withDefaults()); fe != nil {
		return fe
	}
	return nil
}

// ValidateUplink checks a decoded frame: at most MaxReadingsPerFrame readings, seqs strictly
// increasing, every reading valid (see ValidateReading), at most MaxReportsPerFrame valid command
// reports, at least one reading or report, no unknown field. It does not check the
// encoded size, which only DecodeUplink sees. It returns nil or a *FrameError.
func ValidateUplink(u *Uplink, now time.Time, lim Limits) error {
	if fe := validateUplink(u, now.UnixMilli(), lim.withDefaults()); fe != nil {
		return fe
	}
	return nil
}

func validateUplink(u *Uplink, nowMs int64, lim Limits) *FrameError {
	if u != nil {
		// First: a field of the wrong wire type also lands here, and explains an empty frame.
		if unk := u.ProtoReflect().GetUnknown(); len(unk) > 0 {
			return frameErr(KindMalformed, "", unknownFieldReason(u.ProtoReflect().Descriptor(), unk)+" in frame")
		}
	}
	if u == nil || len(u.Readings) == 0 && len(u.Reports) == 0 {
		return frameErr(KindEmpty, "readings", "frame has no reading")
	}
	if fe := validateReports(u.Reports); fe != nil {
		return fe
	}
	if n := len(u.Readings); n > lim.MaxReadingsPerFrame {
		return frameErr(KindTooManyReadings, "readings",
			strconv.Itoa(n)+" readings in frame, limit "+strconv.Itoa(lim.MaxReadingsPerFrame))
	}
	var prev uint64
	for i, r := range u.Readings {
		if fe := validateReading(r, i, nowMs, lim); fe != nil {
			return fe
		}
		if i > 0 && r.Seq <= prev {
			return readingErr(i, KindSequence, "seq", "seq "+strconv.FormatUint(r.Seq, 10)+
				" not greater than seq "+strconv.FormatUint(prev, 10)+" of reading "+strconv.Itoa(i-1))
		}
		prev = r.Seq
	}
	return nil
}

// readingErr builds the FrameError of reading i (i < 0: a reading validated alone).
func readingErr(i int, kind FrameErrorKind, field, reason string) *FrameError {
	if i >= 0 {
		reason = "reading " + strconv.Itoa(i) + ": " + reason
	} else {
		i = -1
	}
	return &FrameError{Kind: kind, Reason: reason, Index: i, Field: field}
}

func validateReading(r *Reading, i int, nowMs int64, lim Limits) *FrameError {
	if r == nil {
		return readingErr(i, KindMalformed, "", "reading missing")
	}
	if unk := r.ProtoReflect().GetUnknown(); len(unk) > 0 {
		return readingErr(i, KindMalformed, "", unknownFieldReason(r.ProtoReflect().Descriptor(), unk))
	}
	v := readingValues{seq: r.Seq, timeMs: r.TimeMs}
	if r.OdometerKm != nil {
		v.odometer, v.hasOdometer = *r.OdometerKm, true
	}
	if r.LatE7 != nil {
		v.lat, v.hasLat = *r.LatE7, true
	}
	if r.LonE7 != nil {
		v.lon, v.hasLon = *r.LonE7, true
	}
	if r.Satellites != nil {
		v.sats, v.hasSats = *r.Satellites, true
	}
	for k, p := range [...]*float32{r.AltitudeM, r.HeadingDeg, r.SpeedKmh, r.EngineTempC, r.EngineRpm,
		r.FuelLevelPct, r.BatteryVoltageV, r.BatteryCurrentA, r.PneumaticPressureKpa} {
		if p != nil {
			v.floats[k], v.hasFloat = *p, v.hasFloat|1<<k
		}
	}
	if fe := v.check(i, nowMs, lim); fe != nil {
		return fe
	}
	return checkExtra(r.Extra, i, lim)
}

// readingValues are the scalar fields of a reading, decoded: what the rules below check. Both
// validateReading (from a decoded *Reading) and ScanUplink (from the wire, scan.go) fill one, so
// the rules exist once.
type readingValues struct {
	seq            uint64
	timeMs         int64
	lat, lon       int32
	hasLat, hasLon bool
	sats           uint32
	hasSats        bool
	floats         [len(floatRules)]float32 // in floatRules' order
	hasFloat       uint16                   // bit k: floats[k] is set
	odometer       float64
	hasOdometer    bool
}

// floatRules are the float32 sensor fields, their proto field numbers and ranges.
var floatRules = [...]struct {
	name    string
	num     int // field number in telemetry.proto
	lo, hi  float64
	hiOpen  bool
	display string
}{
	{"altitude_m", 5, MinAltitudeM, MaxAltitudeM, false, "[-1000, 10000]"},
	{"heading_deg", 6, 0, MaxHeadingDeg, true, "[0, 360)"},
	{"speed_kmh", 7, 0, MaxSpeedKmh, false, "[0, 400]"},
	{"engine_temp_c", 10, MinEngineTempC, MaxEngineTempC, false, "[-60, 200]"},
	{"engine_rpm", 11, 0, MaxEngineRPM, false, "[0, 20000]"},
	{"fuel_level_pct", 12, 0, MaxFuelPct, false, "[0, 100]"},
	{"battery_voltage_v", 14, 0, MaxBatteryV, false, "[0, 1500]"},
	{"battery_current_a", 15, -MaxBatteryAbsA, MaxBatteryAbsA, false, "[-3000, 3000]"},
	{"pneumatic_pressure_kpa", 16, 0, MaxPneumaticKpa, false, "[0, 2500]"},
}

// check applies every rule of a reading but the unknown-field and extra ones.
func (r *readingValues) check(i int, nowMs int64, lim Limits) *FrameError {
	if r.seq == 0 {
		return readingErr(i, KindSequence, "seq", "seq missing (must be > 0)")
	}
	if r.seq > MaxSeq {
		return readingErr(i, KindSequence, "seq", "seq "+strconv.FormatUint(r.seq, 10)+
			" out of range [1, 9223372036854775807]")
	}
	if fe := checkTime(r.timeMs, i, nowMs, lim); fe != nil {
		return fe
	}

	// Position: both or neither.
	switch {
	case r.hasLat && !r.hasLon:
		return readingErr(i, KindRange, "lon_e7", "lat_e7 without lon_e7")
	case !r.hasLat && r.hasLon:
		return readingErr(i, KindRange, "lat_e7", "lon_e7 without lat_e7")
	case r.hasLat:
		if v := r.lat; v < MinLatE7 || v > MaxLatE7 {
			return readingErr(i, KindRange, "lat_e7", "latitude "+fmtE7(v)+" out of range [-90, 90]")
		}
		if v := r.lon; v < MinLonE7 || v > MaxLonE7 {
			return readingErr(i, KindRange, "lon_e7", "longitude "+fmtE7(v)+" out of range [-180, 180]")
		}
	}
	if r.hasSats && r.sats > MaxSatellites {
		return readingErr(i, KindRange, "satellites", "satellites "+
			strconv.FormatUint(uint64(r.sats), 10)+" out of range [0, 64]")
	}
	for k, f := range floatRules {
		if r.hasFloat&(1<<k) == 0 {
			continue
		}
		v := float64(r.floats[k])
		if bad := nonFinite(v); bad != "" {
			return readingErr(i, KindRange, f.name, f.name+" is "+bad)
		}
		if v < f.lo || v > f.hi || (f.hiOpen && v == f.hi) {
			return readingErr(i, KindRange, f.name, f.name+" "+
				strconv.FormatFloat(v, 'g', -1, 32)+" out of range "+f.display)
		}
	}
	if r.hasOdometer {
		v := r.odometer
		if bad := nonFinite(v); bad != "" {
			return readingErr(i, KindRange, "odometer_km", "odometer_km is "+bad)
		}
		if v < 0 || v > MaxOdometerKm {
			return readingErr(i, KindRange, "odometer_km", "odometer_km "+
				strconv.FormatFloat(v, 'g', -1, 64)+" out of range [0, 1e8]")
		}
	}
	return nil
}

func checkTime(ms int64, i int, nowMs int64, lim Limits) *FrameError {
	if ms == 0 {
		return readingErr(i, KindTime, "time_ms", "time_ms missing")
	}
	// Bounds in milliseconds, saturated so that no arithmetic overflows.
	latest := satAdd(nowMs, lim.MaxFutureSkew.Milliseconds())
	earliest := satAdd(nowMs, -lim.MaxAge.Milliseconds())
	if ms > latest {
		return readingErr(i, KindTime, "time_ms", "time_ms "+strconv.FormatInt(ms, 10)+" is "+
			fmtMsDelta(ms, nowMs)+" ahead of server time (limit "+fmtDuration(lim.MaxFutureSkew)+")")
	}
	if ms < earliest {
		return readingErr(i, KindTime, "time_ms", "time_ms "+strconv.FormatInt(ms, 10)+" is "+
			fmtMsDelta(nowMs, ms)+" old (limit "+fmtDuration(lim.MaxAge)+")")
	}
	// Only reached with very wide limits or a server clock far off: the window above holds
	// the bounds of the sinks with any sane clock.
	if ms < MinTimeMs || ms > MaxTimeMs {
		return readingErr(i, KindTime, "time_ms", "time_ms "+strconv.FormatInt(ms, 10)+
			" outside years 1677 to 2262 [-9223372036854, 9223372036853]")
	}
	return nil
}

func checkExtra(extra map[string]float64, i int, lim Limits) *FrameError {
	if len(extra) == 0 {
		return nil
	}
	if len(extra) > lim.MaxExtra {
		return readingErr(i, KindExtra, "extra", strconv.Itoa(len(extra))+
			" extra values, limit "+strconv.Itoa(lim.MaxExtra))
	}
	for k, v := range extra {
		if fe := checkExtraEntry(k, v, i, lim); fe != nil {
			return fe
		}
	}
	return nil
}

// checkExtraEntry checks one extra value and its key.
func checkExtraEntry(k string, v float64, i int, lim Limits) *FrameError {
	switch {
	case k == "":
		return readingErr(i, KindExtra, "extra", "extra key empty")
	case len(k) > lim.MaxExtraKeyLen:
		return readingErr(i, KindExtra, "extra", "extra key of "+strconv.Itoa(len(k))+
			" bytes, limit "+strconv.Itoa(lim.MaxExtraKeyLen))
	case !utf8.ValidString(k):
		return readingErr(i, KindExtra, "extra", "extra key not valid UTF-8")
	case hasControl(k):
		return readingErr(i, KindExtra, "extra", "extra key "+strconv.Quote(k)+" has a control character")
	case strings.IndexByte(k, '\\') >= 0:
		return readingErr(i, KindExtra, "extra", "extra key "+strconv.Quote(k)+" has a backslash")
	}
	if bad := nonFinite(v); bad != "" {
		return readingErr(i, KindRange, "extra", "extra "+strconv.Quote(k)+" is "+bad)
	}
	return nil
}

// nonFinite returns "NaN" or "infinite" for such a value, "" for a finite one.
func nonFinite(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 0):
		return "infinite"
	}
	return ""
}

// hasControl reports whether s has a control character (C0, DEL, C1): sinks such as InfluxDB line
// protocol cannot carry newlines in a field key. (Nor backslashes, checked apart: a key is an
// InfluxDB field key x_<key>, where a backslash escapes the character after it.)
func hasControl(s string) bool {
	for _, c := range s {
		if unicode.IsControl(c) {
			return true
		}
	}
	return false
}

// fmtE7 formats degrees × 1e7 as degrees, e.g. 951000000 → "95.1".
func fmtE7(v int32) string {
	return strconv.FormatFloat(float64(v)/1e7, 'f', -1, 64)
}

// satAdd returns a+b, saturated to the int64 range.
func satAdd(a, b int64) int64 {
	s := a + b
	if (b > 0 && s < a) || (b < 0 && s > a) {
		if b > 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// fmtMsDelta formats hi-lo milliseconds (hi > lo) as a rounded duration, without overflow.
func fmtMsDelta(hi, lo int64) string {
	d := uint64(hi) - uint64(lo) // exact: hi > lo, both int64
	const maxMs = uint64(math.MaxInt64 / int64(time.Millisecond))
	if d > maxMs {
		return "more than 290 years"
	}
	return fmtDuration(time.Duration(d) * time.Millisecond)
}

// fmtDuration formats d for a human: exact below two days ("7m0.5s"), days above ("31.5 days").
func fmtDuration(d time.Duration) string {
	if d >= 48*time.Hour {
		days := d.Hours() / 24
		if days > 1e6 {
			return strconv.FormatFloat(days/365.25, 'f', 0, 64) + " years"
		}
		return strconv.FormatFloat(days, 'f', 1, 64) + " days"
	}
	return d.String()
}

// unknownFieldReason explains the first field in raw unknown-field bytes of a message of type md:
// a field number the schema does not have, or a known field sent with the wrong wire type
// (protobuf keeps those as unknown too).
func unknownFieldReason(md protoreflect.MessageDescriptor, b []byte) string {
	num, _, n := protowire.ConsumeTag(b)
	if n < 0 {
		return "unparsable unknown field"
	}
	if fd := md.Fields().ByNumber(num); fd != nil {
		return "field " + string(fd.Name()) + " has the wrong wire type"
	}
	return "unknown field " + strconv.Itoa(int(num))
}
