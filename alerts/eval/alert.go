package eval

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// Severity is how urgent an alert is, from the operator's point of view.
type Severity string

// The severities, most urgent first (ThingsBoard's five).
const (
	Critical Severity = "critical"
	Major    Severity = "major"
	Minor    Severity = "minor"
	Warning  Severity = "warning"
	Info     Severity = "info"
)

// Severities lists every severity, most urgent first.
var Severities = []Severity{Critical, Major, Minor, Warning, Info}

// Rank is the severity's position in Severities (0 = critical); -1 for an
// unknown one.
func (s Severity) Rank() int {
	for i, v := range Severities {
		if v == s {
			return i
		}
	}
	return -1
}

// Valid reports whether s is one of the five severities.
func (s Severity) Valid() bool { return s.Rank() >= 0 }

// The alert types: what happened. A geofence type goes with the fence it
// is about (Alert.Fence).
const (
	TypeOverspeed       = "overspeed"
	TypeHarshAccel      = "harsh_acceleration"
	TypeHarshBrake      = "harsh_braking"
	TypeHarshCorner     = "harsh_cornering"
	TypeOverheat        = "engine_overheat"
	TypeRPM             = "rpm_redline"
	TypeAirPressure     = "air_pressure_low"
	TypeBatteryLow      = "battery_low"
	TypeBatteryHigh     = "battery_high"
	TypeFuelDrop        = "fuel_drop"
	TypeIdling          = "idling"
	TypeIgnitionOn      = "ignition_on"
	TypeIgnitionOff     = "ignition_off"
	TypeSilence         = "silence"
	TypeImplausible     = "implausible_fix"
	TypeGeofenceEnter   = "geofence_enter"
	TypeGeofenceExit    = "geofence_exit"
	TypeGeofenceDwell   = "geofence_dwell"
	TypeGeofenceInside  = "geofence_inside"
	TypeGeofenceOutside = "geofence_outside"
)

// Alert states.
const (
	// StateActive: the condition holds (an episode not yet over).
	StateActive = "active"
	// StateCleared: the condition is over (or the alert was a single
	// event, such as a harsh braking, that is over as it happens).
	StateCleared = "cleared"
)

// Event kinds: what an Event says about its alert.
const (
	// EventRaised: the alert became active.
	EventRaised = "raised"
	// EventCleared: an active alert's condition ended; the alert now has
	// its end, duration and peak.
	EventCleared = "cleared"
	// EventInstant: an alert that is over as it happens (a harsh braking,
	// a fence entry, an ignition edge): raised and cleared in one event.
	EventInstant = "instant"
)

// Alert is one alert: an episode (start, end, peak) or a single event, of
// one type, for one device. Its ID is a function of (type, fence, device,
// start): evaluating the same readings again gives the same alert with the
// same ID, which is what makes a replay harmless downstream.
type Alert struct {
	ID        string   `json:"id"`
	Type      string   `json:"type"`
	Rule      string   `json:"rule"`
	Fence     string   `json:"fence,omitempty"`
	FenceName string   `json:"fence_name,omitempty"`
	Device    string   `json:"device"`
	Fleet     string   `json:"fleet,omitempty"`
	Class     string   `json:"class,omitempty"`
	Severity  Severity `json:"severity"`
	State     string   `json:"state"`
	// StartMs is when the condition began (device time): the first reading
	// over the threshold, the first fix on the new side of a fence.
	StartMs int64 `json:"start_ms"`
	// RaisedMs is the device time of the reading that made the alert
	// (after the minimum duration, the confirming fix).
	RaisedMs int64 `json:"raised_ms"`
	// EndMs is when the condition ended (device time), once cleared.
	EndMs      int64 `json:"end_ms,omitempty"`
	DurationMs int64 `json:"duration_ms,omitempty"`
	// Value is the measurement that raised the alert; Peak the most extreme
	// one of the episode; Threshold what they were compared with, in Unit.
	Value     float64 `json:"value"`
	Peak      float64 `json:"peak"`
	Threshold float64 `json:"threshold,omitempty"`
	Unit      string  `json:"unit,omitempty"`
	Lat       float64 `json:"lat"`
	Lon       float64 `json:"lon"`
	HasPos    bool    `json:"has_position"`
	// FirstSeq and LastSeq are the device sequence numbers of the readings
	// that make the alert: the first of the episode, and the last one
	// evaluated for it.
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	// Late marks an alert found in readings that reached drover long after
	// they were taken (a store-and-forward flush, a stretch that arrived
	// out of order): its times are the real ones, and it is not pushed live
	// once older than the live threshold.
	Late bool `json:"late"`
	// DelayMs is how long after the event the reading that revealed it
	// reached a frontend (its received time minus the event's device time).
	DelayMs int64 `json:"delay_ms"`
	// EndReason says why an episode ended when it is not the condition
	// going away: "rule_removed", "stretch_end".
	EndReason string `json:"end_reason,omitempty"`
	Message   string `json:"message"`
}

// Event is one change of an alert, in the order the engine found them. Its
// ID is the alert's ID and the event kind: unique and deterministic.
type Event struct {
	Kind string `json:"event"`
	// AtMs is the device time of the change: the alert's RaisedMs for
	// raised and instant, EndMs for cleared.
	AtMs int64 `json:"at_ms"`
	// DetectedMs is when the reading that caused the change reached a
	// frontend (its received time), or the engine's clock for a silence.
	DetectedMs int64 `json:"detected_ms"`
	Alert      Alert `json:"alert"`
}

// ID is the event's identity: the alert's ID, a dot, the kind.
func (e *Event) ID() string { return e.Alert.ID + "." + e.Kind }

// AlertID returns the deterministic identity of the alert of type typ
// about fence (empty when none) for device, that started at startMs:
// "al_" and 24 hex digits of a SHA-256 over the four.
func AlertID(typ, fence, device string, startMs int64) string {
	h := sha256.New()
	h.Write([]byte(typ))
	h.Write([]byte{0})
	h.Write([]byte(fence))
	h.Write([]byte{0})
	h.Write([]byte(device))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, startMs, 10))
	var sum [sha256.Size]byte
	return "al_" + hex.EncodeToString(h.Sum(sum[:0])[:12])
}

// describe writes the alert's one-line message.
func (a *Alert) describe() {
	what := a.Type
	switch a.Type {
	case TypeOverspeed:
		what = fmt.Sprintf("speed %.0f km/h over the %.0f km/h limit", a.Peak, a.Threshold)
	case TypeHarshAccel:
		what = fmt.Sprintf("harsh acceleration %.1f m/s²", a.Peak)
	case TypeHarshBrake:
		what = fmt.Sprintf("harsh braking %.1f m/s²", a.Peak)
	case TypeHarshCorner:
		what = fmt.Sprintf("harsh cornering %.1f m/s²", a.Peak)
	case TypeOverheat:
		what = fmt.Sprintf("engine temperature %.0f °C over %.0f °C", a.Peak, a.Threshold)
	case TypeRPM:
		what = fmt.Sprintf("engine speed %.0f rpm over the %.0f rpm redline", a.Peak, a.Threshold)
	case TypeAirPressure:
		what = fmt.Sprintf("air pressure %.0f kPa under %.0f kPa", a.Peak, a.Threshold)
	case TypeBatteryLow:
		what = fmt.Sprintf("battery %.1f V under %.1f V", a.Peak, a.Threshold)
	case TypeBatteryHigh:
		what = fmt.Sprintf("battery %.1f V over %.1f V", a.Peak, a.Threshold)
	case TypeFuelDrop:
		what = fmt.Sprintf("fuel level fell %.0f%% while parked", a.Peak)
	case TypeIdling:
		what = "idling"
	case TypeIgnitionOn:
		what = "ignition on"
	case TypeIgnitionOff:
		what = "ignition off"
	case TypeSilence:
		what = "no reading"
	case TypeImplausible:
		what = fmt.Sprintf("implausible fix: a jump at %.0f km/h", a.Peak)
	case TypeGeofenceEnter:
		what = "entered " + a.fenceLabel()
	case TypeGeofenceExit:
		what = "left " + a.fenceLabel()
	case TypeGeofenceDwell:
		what = "dwelling in " + a.fenceLabel()
	case TypeGeofenceInside:
		what = "inside " + a.fenceLabel()
	case TypeGeofenceOutside:
		what = "outside " + a.fenceLabel()
	}
	if a.State == StateCleared && a.DurationMs > 0 {
		what += fmt.Sprintf(" for %s", fmtDuration(a.DurationMs))
	}
	if a.Late {
		what += " (late)"
	}
	a.Message = a.Device + ": " + what
}

func (a *Alert) fenceLabel() string {
	if a.FenceName != "" {
		return a.FenceName
	}
	return a.Fence
}

// fmtDuration writes ms as "1h2m", "3m4s" or "5s".
func fmtDuration(ms int64) string {
	s := ms / 1000
	switch {
	case s >= 3600:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	case s >= 60:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	}
	return fmt.Sprintf("%ds", s)
}
