package eval

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// OverspeedSettings: speed over the limit (the class's, or a speed zone's
// when lower) plus the tolerance, for at least MinDuration, is one alert
// that ends once the speed stays at or under the limit for ClearAfter.
type OverspeedSettings struct {
	LimitKmh     float64  `json:"limit_kmh"`
	ToleranceKmh float64  `json:"tolerance_kmh"`
	MinDuration  Duration `json:"min_duration"`
	ClearAfter   Duration `json:"clear_after"`
	Zones        bool     `json:"zones"`
}

// HarshSettings: harsh acceleration, braking or cornering, from the speed
// and heading of two consecutive fixes at most MaxGap apart, or from the
// accelerometer value ExtraKey of the reading's extra map (times
// ExtraScale, to m/s²) when the device sends one.
type HarshSettings struct {
	ThresholdMs2 float64  `json:"threshold_ms2"`
	MaxGap       Duration `json:"max_gap"`
	Cooldown     Duration `json:"cooldown"`
	MinSpeedKmh  float64  `json:"min_speed_kmh"`
	ExtraKey     string   `json:"extra_key"`
	ExtraScale   float64  `json:"extra_scale"`
}

// ThresholdSettings: a sensor value beyond Threshold for at least
// MinDuration is one alert, which ends once the value is back by
// Hysteresis for ClearAfter. IgnitionOnly evaluates the rule only while
// the ignition is on (air pressure drops in a parked truck).
type ThresholdSettings struct {
	Threshold    float64  `json:"threshold"`
	Hysteresis   float64  `json:"hysteresis"`
	MinDuration  Duration `json:"min_duration"`
	ClearAfter   Duration `json:"clear_after"`
	IgnitionOnly bool     `json:"ignition_only"`
}

// FuelDropSettings: the fuel level falling by DropPct (points of the tank)
// within Window while parked (speed at most MaxSpeedKmh, or the ignition
// off): one alert per parked period.
type FuelDropSettings struct {
	DropPct     float64  `json:"drop_pct"`
	Window      Duration `json:"window"`
	MaxSpeedKmh float64  `json:"max_speed_kmh"`
}

// IdlingSettings: ignition on and speed at most MaxSpeedKmh for longer than
// After.
type IdlingSettings struct {
	After       Duration `json:"after"`
	MaxSpeedKmh float64  `json:"max_speed_kmh"`
}

// IgnitionSettings: ignition on and off, as the device reports it. No
// settings.
type IgnitionSettings struct{}

// SilenceSettings: no reading for After (AfterParked when the last reading
// had the ignition off; 0 never), by the engine's clock.
type SilenceSettings struct {
	After       Duration `json:"after"`
	AfterParked Duration `json:"after_parked"`
}

// ImplausibleSettings: a fix that implies moving faster than MaxSpeedKmh
// from the last good one (and further than MinDistanceM) is flagged and
// kept out of the geofence and speed rules; one alert per Cooldown.
type ImplausibleSettings struct {
	MaxSpeedKmh  float64  `json:"max_speed_kmh"`
	MinDistanceM float64  `json:"min_distance_m"`
	Cooldown     Duration `json:"cooldown"`
}

// GeofenceSettings are the defaults of every fence the device is subject
// to: the hysteresis, and how long a dwell is.
type GeofenceSettings struct {
	MarginM      float64  `json:"margin_m"`
	ConfirmFixes int      `json:"confirm_fixes"`
	ConfirmTime  Duration `json:"confirm_time"`
	Dwell        Duration `json:"dwell"`
}

// builtin holds, per kind, the defaults every configuration starts from:
// settings, severity and whether the kind is on at all.
type builtin struct {
	settings string
	severity Severity
	enabled  bool
}

var builtins = map[string]builtin{
	KindOverspeed:   {`{"limit_kmh":120,"tolerance_kmh":5,"min_duration":"15s","clear_after":"10s","zones":true}`, Major, true},
	KindHarshAccel:  {`{"threshold_ms2":3.5,"max_gap":"3s","cooldown":"10s","min_speed_kmh":0,"extra_key":"accel_long_ms2","extra_scale":1}`, Minor, true},
	KindHarshBrake:  {`{"threshold_ms2":4.5,"max_gap":"3s","cooldown":"10s","min_speed_kmh":0,"extra_key":"accel_long_ms2","extra_scale":1}`, Minor, true},
	KindHarshCorner: {`{"threshold_ms2":4.5,"max_gap":"3s","cooldown":"10s","min_speed_kmh":20,"extra_key":"accel_lat_ms2","extra_scale":1}`, Minor, true},
	KindOverheat:    {`{"threshold":105,"hysteresis":3,"min_duration":"30s","clear_after":"30s"}`, Critical, true},
	KindRPM:         {`{"threshold":4500,"hysteresis":200,"min_duration":"5s","clear_after":"5s"}`, Warning, true},
	KindAirPressure: {`{"threshold":550,"hysteresis":20,"min_duration":"10s","clear_after":"10s","ignition_only":true}`, Critical, true},
	KindBatteryLow:  {`{"threshold":11.8,"hysteresis":0.3,"min_duration":"2m","clear_after":"1m"}`, Warning, true},
	KindBatteryHigh: {`{"threshold":15,"hysteresis":0.3,"min_duration":"1m","clear_after":"1m"}`, Warning, true},
	KindFuelDrop:    {`{"drop_pct":8,"window":"10m","max_speed_kmh":3}`, Major, true},
	KindIdling:      {`{"after":"10m","max_speed_kmh":2}`, Warning, true},
	KindIgnition:    {`{}`, Info, false},
	KindSilence:     {`{"after":"10m","after_parked":"0s"}`, Major, true},
	KindImplausible: {`{"max_speed_kmh":300,"min_distance_m":200,"cooldown":"10m"}`, Warning, true},
	KindGeofence:    {`{"margin_m":20,"confirm_fixes":3,"confirm_time":"5s","dwell":"30m"}`, Info, true},
}

// builtinClasses are defaults for the common vehicle classes (the
// simulator's): heavy vehicles have lower limits, lower redlines and 24 V
// electrics. Any configured rule overrides them.
var builtinClasses = map[string]map[string]string{
	"truck": {
		KindOverspeed:   `{"limit_kmh":80}`,
		KindRPM:         `{"threshold":2300}`,
		KindBatteryLow:  `{"threshold":23.5}`,
		KindBatteryHigh: `{"threshold":29.5}`,
	},
	"bus": {
		KindOverspeed:   `{"limit_kmh":100}`,
		KindRPM:         `{"threshold":2500}`,
		KindBatteryLow:  `{"threshold":23.5}`,
		KindBatteryHigh: `{"threshold":29.5}`,
	},
	"car": {
		KindOverspeed: `{"limit_kmh":120}`,
	},
}

// newSettings returns the zero settings value of kind.
func newSettings(kind string) any {
	switch kind {
	case KindOverspeed:
		return &OverspeedSettings{}
	case KindHarshAccel, KindHarshBrake, KindHarshCorner:
		return &HarshSettings{}
	case KindOverheat, KindRPM, KindAirPressure, KindBatteryLow, KindBatteryHigh:
		return &ThresholdSettings{}
	case KindFuelDrop:
		return &FuelDropSettings{}
	case KindIdling:
		return &IdlingSettings{}
	case KindIgnition:
		return &IgnitionSettings{}
	case KindSilence:
		return &SilenceSettings{}
	case KindImplausible:
		return &ImplausibleSettings{}
	case KindGeofence:
		return &GeofenceSettings{}
	}
	return nil
}

// resolveKind merges the built-in settings of kind with layers (JSON
// objects, least specific first; later keys win) and decodes the result,
// refusing unknown fields and checking the values.
func resolveKind(kind string, layers [][]byte) (any, error) {
	merged := map[string]json.RawMessage{}
	all := append([][]byte{[]byte(builtins[kind].settings)}, layers...)
	for _, l := range all {
		l = bytes.TrimSpace(l)
		if len(l) == 0 || string(l) == "null" {
			continue
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(l, &m); err != nil {
			return nil, fmt.Errorf("want a JSON object: %w", err)
		}
		for k, v := range m {
			merged[k] = v
		}
	}
	b, _ := json.Marshal(merged)
	s := newSettings(kind)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		return nil, err
	}
	if err := checkSettings(s); err != nil {
		return nil, err
	}
	return s, nil
}

func finitePos(name string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
		return fmt.Errorf("%s: %v, want a positive number", name, v)
	}
	return nil
}

func nonNeg(name string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return fmt.Errorf("%s: %v, want 0 or more", name, v)
	}
	return nil
}

func nonNegDur(name string, d Duration) error {
	if d < 0 || time.Duration(d) > 30*24*time.Hour {
		return fmt.Errorf("%s: %v, want 0 to 720h", name, time.Duration(d))
	}
	return nil
}

// checkSettings checks the values of decoded settings.
func checkSettings(s any) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	switch s := s.(type) {
	case *OverspeedSettings:
		add(finitePos("limit_kmh", s.LimitKmh))
		add(nonNeg("tolerance_kmh", s.ToleranceKmh))
		add(nonNegDur("min_duration", s.MinDuration))
		add(nonNegDur("clear_after", s.ClearAfter))
	case *HarshSettings:
		add(finitePos("threshold_ms2", s.ThresholdMs2))
		add(finitePos("max_gap", float64(s.MaxGap)))
		add(nonNegDur("cooldown", s.Cooldown))
		add(nonNeg("min_speed_kmh", s.MinSpeedKmh))
		add(finitePos("extra_scale", s.ExtraScale))
		if len(s.ExtraKey) > 64 {
			add(errors.New("extra_key: over 64 bytes"))
		}
	case *ThresholdSettings:
		if math.IsNaN(s.Threshold) || math.IsInf(s.Threshold, 0) {
			add(errors.New("threshold: want a finite number"))
		}
		add(nonNeg("hysteresis", s.Hysteresis))
		add(nonNegDur("min_duration", s.MinDuration))
		add(nonNegDur("clear_after", s.ClearAfter))
	case *FuelDropSettings:
		add(finitePos("drop_pct", s.DropPct))
		add(finitePos("window", float64(s.Window)))
		add(nonNegDur("window", s.Window))
		add(nonNeg("max_speed_kmh", s.MaxSpeedKmh))
	case *IdlingSettings:
		add(finitePos("after", float64(s.After)))
		add(nonNegDur("after", s.After))
		add(nonNeg("max_speed_kmh", s.MaxSpeedKmh))
	case *SilenceSettings:
		add(finitePos("after", float64(s.After)))
		add(nonNegDur("after", s.After))
		add(nonNegDur("after_parked", s.AfterParked))
	case *ImplausibleSettings:
		add(finitePos("max_speed_kmh", s.MaxSpeedKmh))
		add(nonNeg("min_distance_m", s.MinDistanceM))
		add(nonNegDur("cooldown", s.Cooldown))
	case *GeofenceSettings:
		add(nonNeg("margin_m", s.MarginM))
		if s.MarginM > 10_000 {
			add(errors.New("margin_m: at most 10000"))
		}
		if s.ConfirmFixes < 1 || s.ConfirmFixes > 1000 {
			add(fmt.Errorf("confirm_fixes: %d, want 1 to 1000", s.ConfirmFixes))
		}
		add(nonNegDur("confirm_time", s.ConfirmTime))
		add(nonNegDur("dwell", s.Dwell))
	}
	return errors.Join(errs...)
}

// kindRule is one kind's resolved rule for a profile.
type kindRule struct {
	on       bool
	rule     string // the most specific configured rule's id, or "default"
	severity Severity
	settings any
}

// Profile is every rule kind resolved for one (fleet, class): what the
// engine evaluates a device with.
type Profile struct {
	rules map[string]*kindRule

	overspeed                          *OverspeedSettings
	harshAccel, harshBrake, harshCor   *HarshSettings
	overheat, rpm, air, battLo, battHi *ThresholdSettings
	fuel                               *FuelDropSettings
	idling                             *IdlingSettings
	ignition                           bool
	silence                            *SilenceSettings
	implausible                        *ImplausibleSettings
	geofence                           *GeofenceSettings
}

// resolveProfile resolves every kind for (fleet, class) from rules.
func resolveProfile(rules []Rule, fleet, class string) (*Profile, error) {
	p := &Profile{rules: map[string]*kindRule{}}
	for _, kind := range Kinds {
		b := builtins[kind]
		kr := &kindRule{on: b.enabled, rule: "default", severity: b.severity}
		var layers [][]byte
		if cl, ok := builtinClasses[class]; ok && cl[kind] != "" {
			layers = append(layers, []byte(cl[kind]))
		}
		// Configured rules, least specific first: every device, a fleet,
		// a class, a fleet's class.
		for level := range 4 {
			for i := range rules {
				r := &rules[i]
				if r.Kind != kind || ruleLevel(r) != level {
					continue
				}
				if (r.Fleet != "" && r.Fleet != fleet) || (r.Class != "" && r.Class != class) {
					continue
				}
				layers = append(layers, r.Settings)
				kr.rule = r.ID
				if r.Severity != "" {
					kr.severity = r.Severity
				}
				if r.Enabled != nil {
					kr.on = *r.Enabled
				} else {
					kr.on = true
				}
			}
		}
		s, err := resolveKind(kind, layers)
		if err != nil {
			return nil, fmt.Errorf("%s for fleet %q class %q: %w", kind, fleet, class, err)
		}
		kr.settings = s
		p.rules[kind] = kr
	}
	on := func(kind string) bool { return p.rules[kind].on }
	get := func(kind string) any {
		if !on(kind) {
			return nil
		}
		return p.rules[kind].settings
	}
	p.overspeed, _ = get(KindOverspeed).(*OverspeedSettings)
	p.harshAccel, _ = get(KindHarshAccel).(*HarshSettings)
	p.harshBrake, _ = get(KindHarshBrake).(*HarshSettings)
	p.harshCor, _ = get(KindHarshCorner).(*HarshSettings)
	p.overheat, _ = get(KindOverheat).(*ThresholdSettings)
	p.rpm, _ = get(KindRPM).(*ThresholdSettings)
	p.air, _ = get(KindAirPressure).(*ThresholdSettings)
	p.battLo, _ = get(KindBatteryLow).(*ThresholdSettings)
	p.battHi, _ = get(KindBatteryHigh).(*ThresholdSettings)
	p.fuel, _ = get(KindFuelDrop).(*FuelDropSettings)
	p.idling, _ = get(KindIdling).(*IdlingSettings)
	p.ignition = on(KindIgnition)
	p.silence, _ = get(KindSilence).(*SilenceSettings)
	p.implausible, _ = get(KindImplausible).(*ImplausibleSettings)
	// Geofence defaults apply to fences even when the kind is "off": off
	// then means no fence events for these devices.
	p.geofence = p.rules[KindGeofence].settings.(*GeofenceSettings)
	return p, nil
}

// ruleLevel is how specific a rule is: 0 every device, 1 a fleet, 2 a
// class, 3 a fleet's class.
func ruleLevel(r *Rule) int {
	switch {
	case r.Fleet != "" && r.Class != "":
		return 3
	case r.Class != "":
		return 2
	case r.Fleet != "":
		return 1
	}
	return 0
}

// Rule returns the id of the rule that decides kind in this profile, its
// severity, and whether the kind is on.
func (p *Profile) Rule(kind string) (id string, sev Severity, on bool) {
	kr := p.rules[kind]
	if kr == nil {
		return "", "", false
	}
	return kr.rule, kr.severity, kr.on
}

// Settings returns the resolved settings of kind (a *OverspeedSettings,
// *HarshSettings, ...), whether or not the kind is on.
func (p *Profile) Settings(kind string) any {
	if kr := p.rules[kind]; kr != nil {
		return kr.settings
	}
	return nil
}
