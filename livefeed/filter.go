package livefeed

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// BBox is a map area: the vehicles whose position is inside it, edges
// included. Longitudes are in [-180, 180], latitudes in [-90, 90], degrees
// (WGS 84). West greater than East means the box crosses the antimeridian:
// West=170, East=-170 is the 20° around 180°.
type BBox struct {
	West  float64 `json:"west"`
	South float64 `json:"south"`
	East  float64 `json:"east"`
	North float64 `json:"north"`
}

// box is a BBox in the units of positions, degrees × 10^7, so that a
// vehicle exactly on an edge is inside without floating-point doubt.
type box struct {
	west, south, east, north int32
}

// e7 converts degrees to degrees × 10^7, rounded to the nearest.
func e7(deg float64) int32 { return int32(math.Round(deg * 1e7)) }

const (
	lon180 = 180 * 10_000_000
	lat90  = 90 * 10_000_000
)

// newBox checks b and converts it.
func newBox(b BBox) (box, error) {
	for _, x := range []float64{b.West, b.South, b.East, b.North} {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return box{}, fmt.Errorf("bbox: %v is not a number", x)
		}
	}
	switch {
	case b.South < -90 || b.North > 90 || b.South > 90 || b.North < -90:
		return box{}, fmt.Errorf("bbox: latitudes %v..%v out of [-90, 90]", b.South, b.North)
	case b.South > b.North:
		return box{}, fmt.Errorf("bbox: south %v is north of north %v", b.South, b.North)
	case b.West < -180 || b.West > 180 || b.East < -180 || b.East > 180:
		return box{}, fmt.Errorf("bbox: longitudes %v, %v out of [-180, 180]", b.West, b.East)
	}
	return box{west: e7(b.West), south: e7(b.South), east: e7(b.East), north: e7(b.North)}, nil
}

// contains reports whether the position is in the box, edges included.
// Longitudes -180 and 180 are the same meridian.
func (b box) contains(latE7, lonE7 int32) bool {
	if latE7 < b.south || latE7 > b.north {
		return false
	}
	if b.containsLon(lonE7) {
		return true
	}
	switch lonE7 {
	case lon180:
		return b.containsLon(-lon180)
	case -lon180:
		return b.containsLon(lon180)
	}
	return false
}

func (b box) containsLon(lon int32) bool {
	if b.west <= b.east {
		return lon >= b.west && lon <= b.east
	}
	return lon >= b.west || lon <= b.east // across the antimeridian
}

// bbox converts back, for echoing the subscription to the client.
func (b box) bbox() *BBox {
	return &BBox{West: float64(b.west) / 1e7, South: float64(b.south) / 1e7, East: float64(b.east) / 1e7, North: float64(b.north) / 1e7}
}

// subscribeMsg is a client's subscribe message (docs/live-api.md).
type subscribeMsg struct {
	Type    string   `json:"type"`
	ID      string   `json:"id,omitempty"`
	Devices []string `json:"devices,omitempty"`
	Fleets  []string `json:"fleets,omitempty"`
	BBox    *BBox    `json:"bbox,omitempty"`
	MaxRate float64  `json:"max_rate_hz,omitempty"`
}

// subscription is a client's filter in force. Immutable once made. A vehicle
// matches when it is in the client's scope and in every criterion given
// (devices, fleets, bbox); a criterion not given matches everything.
type subscription struct {
	id       string
	devices  map[string]struct{} // nil: any
	fleets   map[string]struct{} // nil: any fleet of the scope
	box      *box                // nil: anywhere, with or without a position
	rate     float64             // updates per second per vehicle
	interval time.Duration       // 1/rate

	// For echoing in the snapshot.
	deviceList, fleetList []string
}

// Error codes of error messages (docs/live-api.md).
const (
	errCodeBadMessage     = "bad_message"
	errCodeBadSubscribe   = "bad_subscription"
	errCodeForbiddenFleet = "fleet_not_allowed"
	errCodeRateLimited    = "rate_limited"
	errCodeTooSlow        = "too_slow"
)

// clientError is an error to send to the client as an error message.
type clientError struct {
	code, msg, id string
}

func (e *clientError) Error() string { return e.code + ": " + e.msg }

// newSubscription checks a subscribe message against the client's scope and
// the server's limits.
func newSubscription(m *subscribeMsg, sc *scope, cfg *Config) (*subscription, *clientError) {
	bad := func(code, format string, args ...any) (*subscription, *clientError) {
		return nil, &clientError{code: code, msg: fmt.Sprintf(format, args...), id: m.ID}
	}
	if len(m.ID) > 128 {
		return bad(errCodeBadSubscribe, "id longer than 128 bytes")
	}
	s := &subscription{id: m.ID}
	if m.Devices != nil {
		if len(m.Devices) > cfg.MaxSubscribeDevices {
			return bad(errCodeBadSubscribe, "%d devices, at most %d per subscription", len(m.Devices), cfg.MaxSubscribeDevices)
		}
		s.devices = make(map[string]struct{}, len(m.Devices))
		for _, d := range m.Devices {
			if d == "" || len(d) > 128 {
				return bad(errCodeBadSubscribe, "device id %q: want 1-128 bytes", d)
			}
			s.devices[d] = struct{}{}
		}
		s.deviceList = sortedKeys(s.devices)
	}
	if m.Fleets != nil {
		s.fleets = make(map[string]struct{}, len(m.Fleets))
		for _, f := range m.Fleets {
			// Checked before anything is looked up: a client learns
			// nothing about fleets outside its scope, not even
			// whether they exist.
			if !sc.allows(f) {
				return bad(errCodeForbiddenFleet, "fleet %q is not among this token's fleets", f)
			}
			s.fleets[f] = struct{}{}
		}
		s.fleetList = sortedKeys(s.fleets)
	}
	if m.BBox != nil {
		b, err := newBox(*m.BBox)
		if err != nil {
			return bad(errCodeBadSubscribe, "%v", err)
		}
		s.box = &b
	}
	switch {
	case math.IsNaN(m.MaxRate) || m.MaxRate < 0:
		return bad(errCodeBadSubscribe, "max_rate_hz %v: want > 0, or 0 or absent for the server's maximum", m.MaxRate)
	case m.MaxRate == 0 || m.MaxRate > cfg.MaxRate:
		s.rate = cfg.MaxRate
	default:
		s.rate = max(m.MaxRate, 0.001)
	}
	s.interval = time.Duration(float64(time.Second) / s.rate)
	return s, nil
}

// match reports whether v passes the subscription's criteria; the scope is
// checked by the caller.
func (s *subscription) match(v *vehicle) bool {
	if s.devices != nil {
		if _, ok := s.devices[v.id]; !ok {
			return false
		}
	}
	if s.fleets != nil {
		if _, ok := s.fleets[v.fleet]; !ok {
			return false
		}
	}
	if s.box != nil {
		if v.has&hasPos == 0 || !s.box.contains(v.latE7, v.lonE7) {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
