package influx

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/drover-telemetry/drover/telemetry"
)

// Tag and field keys of the schema (see the package documentation).
const (
	TagClass  = "class"
	TagDevice = "device"
	TagFleet  = "fleet"
	TagRegion = "region"

	// FieldSeq is the reading's sequence number (integer): with the device
	// tag, the reading's identity.
	FieldSeq = "seq"
	// FieldReceivedMs is when the frontend received the reading, Unix ms (integer).
	FieldReceivedMs = "received_ms"
	// FieldLagMs is received_ms − time_ms (integer): how late the reading
	// reached drover, device clock skew included.
	FieldLagMs = "lag_ms"
	// ExtraPrefix starts the field key of each extra sensor value.
	ExtraPrefix = "x_"
)

// seqSpread is the sub-millisecond room for the sequence number: a point's
// timestamp is time_ms·1e6 + seq mod seqSpread nanoseconds.
const seqSpread = 1_000_000

// Timestamp returns the nanosecond timestamp of the point a reading is
// written as: its device time in milliseconds, with seq mod 1e6 added as
// nanoseconds. A re-delivered reading (same device and seq) lands on the same
// point and overwrites it; two readings of one device within one millisecond
// have different sequence numbers and so different points.
func Timestamp(timeMs int64, seq uint64) int64 {
	return timeMs*1e6 + int64(seq%seqSpread)
}

// errEncode marks a record that cannot be written as a point at all.
var errEncode = errors.New("cannot encode record")

// encoder turns enriched records into InfluxDB line protocol.
type encoder struct {
	measurement string // escaped
	// dropped counts field values left out of a point (non-finite values,
	// extra keys line protocol cannot carry: the frontend refuses both).
	dropped func(n int)
}

func newEncoder(measurement string, dropped func(int)) *encoder {
	if dropped == nil {
		dropped = func(int) {}
	}
	return &encoder{measurement: escapeMeasurement(measurement), dropped: dropped}
}

// appendRecord appends rec as one line (with its trailing newline) to b. On
// error b is returned unchanged.
func (e *encoder) appendRecord(b []byte, rec *telemetry.EnrichedRecord) ([]byte, error) {
	r := rec.GetRecord()
	rd := r.GetReading()
	if r == nil || rd == nil {
		return b, fmt.Errorf("%w: no reading", errEncode)
	}
	if r.GetDeviceId() == "" {
		return b, fmt.Errorf("%w: no device id", errEncode)
	}
	// Validation at the frontend refuses all of these (telemetry.MaxSeq,
	// MinTimeMs, MaxTimeMs); a record here is from elsewhere or older.
	if rd.GetSeq() > telemetry.MaxSeq {
		return b, fmt.Errorf("%w: seq %d is beyond InfluxDB's integers", errEncode, rd.GetSeq())
	}
	if t := rd.GetTimeMs(); t > telemetry.MaxTimeMs || t < telemetry.MinTimeMs {
		return b, fmt.Errorf("%w: time_ms %d is beyond InfluxDB's time range", errEncode, t)
	}

	// Tags, sorted by key as InfluxDB prefers; empty ones are left out
	// (line protocol has no empty tag values).
	en := rec.GetEnrichment()
	start := len(b)
	b = append(b, e.measurement...)
	var err error
	for _, tag := range [...]struct{ key, value string }{
		{TagClass, en.GetVehicleClass()}, {TagDevice, r.GetDeviceId()},
		{TagFleet, en.GetFleet()}, {TagRegion, en.GetRegion()},
	} {
		if b, err = appendTag(b, tag.key, tag.value); err != nil {
			return b[:start], err
		}
	}

	// Fields. seq always comes first, so every point has a field.
	b = append(b, ' ')
	b = append(b, FieldSeq+"="...)
	b = strconv.AppendUint(b, rd.GetSeq(), 10)
	b = append(b, 'i')
	if recv := r.GetReceivedMs(); recv != 0 {
		b = append(b, ","+FieldLagMs+"="...)
		b = strconv.AppendInt(b, recv-rd.GetTimeMs(), 10)
		b = append(b, 'i')
		b = append(b, ","+FieldReceivedMs+"="...)
		b = strconv.AppendInt(b, recv, 10)
		b = append(b, 'i')
	}
	if lat, lon, ok := rd.Position(); ok {
		b = appendFloat64(b, "lat", lat)
		b = appendFloat64(b, "lon", lon)
	}
	b = e.appendFloat32(b, "altitude_m", rd.AltitudeM)
	b = e.appendFloat32(b, "heading_deg", rd.HeadingDeg)
	b = e.appendFloat32(b, "speed_kmh", rd.SpeedKmh)
	if rd.Satellites != nil {
		b = append(b, ",satellites="...)
		b = strconv.AppendUint(b, uint64(*rd.Satellites), 10)
		b = append(b, 'i')
	}
	if rd.Ignition != nil {
		b = append(b, ",ignition="...)
		b = strconv.AppendBool(b, *rd.Ignition)
	}
	b = e.appendFloat32(b, "engine_temp_c", rd.EngineTempC)
	b = e.appendFloat32(b, "engine_rpm", rd.EngineRpm)
	b = e.appendFloat32(b, "fuel_level_pct", rd.FuelLevelPct)
	if v := rd.OdometerKm; v != nil {
		if finite(*v) {
			b = appendFloat64(b, "odometer_km", *v)
		} else {
			e.dropped(1)
		}
	}
	b = e.appendFloat32(b, "battery_voltage_v", rd.BatteryVoltageV)
	b = e.appendFloat32(b, "battery_current_a", rd.BatteryCurrentA)
	b = e.appendFloat32(b, "pneumatic_pressure_kpa", rd.PneumaticPressureKpa)
	b = e.appendExtra(b, rd.GetExtra())

	b = append(b, ' ')
	b = strconv.AppendInt(b, Timestamp(rd.GetTimeMs(), rd.GetSeq()), 10)
	b = append(b, '\n')
	return b, nil
}

// appendExtra appends each extra value as field x_<key>, in key order so
// that the same reading always gives the same line. The key is written
// unchanged (escaped), so that two keys are never one field. A key line
// protocol cannot carry unchanged (a backslash, a control character: the
// frontend refuses both) is left out and counted, like a non-finite value.
func (e *encoder) appendExtra(b []byte, extra map[string]float64) []byte {
	if len(extra) == 0 {
		return b
	}
	// On the stack for the usual handful of extras (validation allows 32).
	var keyArr [32]string
	keys := keyArr[:0]
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := extra[k]
		if !finite(v) || !carriable(k) {
			e.dropped(1)
			continue
		}
		b = append(b, ',')
		b = appendExtraField(b, k)
		b = append(b, '=')
		b = appendNumber(b, v, 64)
	}
	return b
}

// ExtraField returns the field key of the extra sensor value named key:
// "x_" and the key unchanged ("x_tyre.fl-kpa" for "tyre.fl-kpa"). A key
// with characters outside [A-Za-z0-9_] needs double quotes in InfluxQL
// (SELECT "x_tyre.fl-kpa" FROM telemetry).
func ExtraField(key string) string { return ExtraPrefix + key }

// appendExtraField appends the field key x_<key>, with the commas, equals
// signs and spaces of key escaped; key has no backslash (see carriable).
func appendExtraField(b []byte, key string) []byte {
	b = append(b, ExtraPrefix...)
	for i := 0; i < len(key); i++ {
		if c := key[i]; c == ',' || c == '=' || c == ' ' {
			b = append(b, '\\', c)
		} else {
			b = append(b, c)
		}
	}
	return b
}

// carriable reports whether line protocol carries s unchanged as a key or a
// tag value: no control character (a line break ends the point) and no
// backslash (it escapes the character after it, and a trailing one the
// separator).
func carriable(s string) bool {
	for _, c := range s {
		if c == '\\' || unicode.IsControl(c) {
			return false
		}
	}
	return true
}

// appendFloat32 appends ",key=value" for a present, finite float32 value,
// formatted with the fewest digits that give back the float32 (0.1, not
// 0.10000000149011612).
func (e *encoder) appendFloat32(b []byte, key string, v *float32) []byte {
	if v == nil {
		return b
	}
	f := float64(*v)
	if !finite(f) {
		e.dropped(1)
		return b
	}
	b = append(b, ',')
	b = append(b, key...)
	b = append(b, '=')
	return appendNumber(b, f, 32)
}

// appendFloat64 appends ",key=value"; key needs no escaping and v is finite.
func appendFloat64(b []byte, key string, v float64) []byte {
	b = append(b, ',')
	b = append(b, key...)
	b = append(b, '=')
	return appendNumber(b, v, 64)
}

// appendNumber formats a float field value. Line protocol reads a number
// without an 'i' suffix as a float, integral or not; exponents are accepted.
func appendNumber(b []byte, v float64, bits int) []byte {
	return strconv.AppendFloat(b, v, 'g', -1, bits)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// appendTag appends ",key=value" unless value is empty. A value line
// protocol would have to change is an error (errEncode), never a substitute:
// a changed device id could meet another device's series.
func appendTag(b []byte, key, value string) ([]byte, error) {
	if value == "" {
		return b, nil
	}
	b = append(b, ',')
	b = append(b, key...)
	b = append(b, '=')
	return appendTagValue(b, key, value)
}

// appendTagValue escapes a tag value: commas, equals signs and spaces get a
// backslash. Line protocol cannot carry line breaks or other control
// characters in a tag, nor a backslash at the end (it would escape the
// separator that follows): a value with one is refused (telemetry's
// ValidateDeviceID and ValidateLabel refuse them where ids and labels
// enter). A backslash inside a value is stored as it is.
func appendTagValue(b []byte, key, v string) ([]byte, error) {
	if strings.HasSuffix(v, `\`) || strings.ContainsFunc(v, unicode.IsControl) {
		return b, fmt.Errorf("%w: tag %s %q cannot be stored unchanged (a control character or a trailing backslash)", errEncode, key, v)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ',' || c == '=' || c == ' ' {
			b = append(b, '\\', c)
		} else {
			b = append(b, c)
		}
	}
	return b, nil
}

// escapeMeasurement escapes a measurement name: commas and spaces.
func escapeMeasurement(m string) string {
	return strings.NewReplacer(",", `\,`, " ", `\ `).Replace(m)
}
