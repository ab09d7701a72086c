package telemetry

import (
	"math"
	"time"
)

// HasPosition reports whether the reading carries a position fix (both lat_e7 and lon_e7).
func (r *Reading) HasPosition() bool {
	return r != nil && r.LatE7 != nil && r.LonE7 != nil
}

// Position returns the reading's position in degrees, and false when it has no fix.
func (r *Reading) Position() (latDeg, lonDeg float64, ok bool) {
	if !r.HasPosition() {
		return 0, 0, false
	}
	return float64(*r.LatE7) / 1e7, float64(*r.LonE7) / 1e7, true
}

// SetPosition sets the position from degrees, rounded to 1e-7°. Values outside the int32 range
// of degrees × 1e7 (and NaN) are clamped, so that validation refuses them rather than wrapping.
func (r *Reading) SetPosition(latDeg, lonDeg float64) {
	lat, lon := DegreesToE7(latDeg), DegreesToE7(lonDeg)
	r.LatE7, r.LonE7 = &lat, &lon
}

// ClearPosition removes the position: the reading has no fix.
func (r *Reading) ClearPosition() {
	r.LatE7, r.LonE7 = nil, nil
}

// Time returns the device time of the reading (time_ms).
func (r *Reading) Time() time.Time {
	return time.UnixMilli(r.GetTimeMs())
}

// DegreesToE7 converts degrees to degrees × 1e7, rounded, clamped to the int32 range (NaN gives
// math.MaxInt32, which no validation accepts).
func DegreesToE7(deg float64) int32 {
	v := math.Round(deg * 1e7)
	switch {
	case math.IsNaN(v) || v >= math.MaxInt32:
		return math.MaxInt32
	case v <= math.MinInt32:
		return math.MinInt32
	}
	return int32(v)
}

// LastSeq returns the seq of the frame's last reading, which in a valid frame is its highest:
// the sequence number to acknowledge once the frame is stored. It is 0 for an empty frame.
func (u *Uplink) LastSeq() uint64 {
	if u == nil || len(u.Readings) == 0 {
		return 0
	}
	return u.Readings[len(u.Readings)-1].GetSeq()
}
