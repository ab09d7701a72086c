package eval

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RuleSet is everything the engine evaluates with: rules, geofences, and
// where alerts go (webhooks). It is what the API serves to the engine and
// what a rules file holds (docs/alerts.md). Version grows with every change
// (the API's change version; a file's is its modification time).
type RuleSet struct {
	Version   int64     `json:"version"`
	Rules     []Rule    `json:"rules"`
	Geofences []Fence   `json:"geofences"`
	Webhooks  []Webhook `json:"webhooks,omitempty"`
}

// Rule sets the thresholds of one rule kind for the devices it applies to:
// every device, a fleet's, a vehicle class's, or a class within a fleet.
// Where several apply, their settings merge, the most specific winning
// field by field: built-in defaults, then rules for every device, then a
// fleet's, then a class's, then a fleet's class's.
type Rule struct {
	ID          string          `json:"id"`
	Kind        string          `json:"kind"`
	Fleet       string          `json:"fleet,omitempty"`
	Class       string          `json:"class,omitempty"`
	Severity    Severity        `json:"severity,omitempty"`
	Enabled     *bool           `json:"enabled,omitempty"`
	Settings    json.RawMessage `json:"settings,omitempty"`
	Description string          `json:"description,omitempty"`
}

// Fence is a geofence: a polygon (with holes), a multipolygon, a circle (a
// GeoJSON Point with a radius) or a corridor (a LineString with a width),
// with the events it raises.
type Fence struct {
	ID          string          `json:"id"`
	Name        string          `json:"name,omitempty"`
	Fleet       string          `json:"fleet,omitempty"`
	Classes     []string        `json:"classes,omitempty"`
	Devices     []string        `json:"devices,omitempty"`
	Geometry    json.RawMessage `json:"geometry"`
	RadiusM     float64         `json:"radius_m,omitempty"`
	WidthM      float64         `json:"width_m,omitempty"`
	Events      []string        `json:"events,omitempty"`
	Dwell       Duration        `json:"dwell,omitempty"`
	SpeedLimit  float64         `json:"speed_limit_kmh,omitempty"`
	Severity    Severity        `json:"severity,omitempty"`
	Hysteresis  *Hysteresis     `json:"hysteresis,omitempty"`
	Description string          `json:"description,omitempty"`
}

// Hysteresis is what it takes to believe a vehicle crossed a fence's
// boundary: fixes on the new side, beyond the margin, at least
// ConfirmFixes of them spanning at least ConfirmTime. Unset fields take the
// geofence rule's (docs/alerts.md).
type Hysteresis struct {
	MarginM      *float64  `json:"margin_m,omitempty"`
	ConfirmFixes *int      `json:"confirm_fixes,omitempty"`
	ConfirmTime  *Duration `json:"confirm_time,omitempty"`
}

// Webhook is where a fleet's alerts are POSTed, signed with Secret
// (HMAC-SHA256). Fleet "" receives every fleet's alerts.
type Webhook struct {
	ID          string   `json:"id"`
	Fleet       string   `json:"fleet,omitempty"`
	URL         string   `json:"url"`
	Secret      string   `json:"secret,omitempty"`
	Types       []string `json:"types,omitempty"`
	MinSeverity Severity `json:"min_severity,omitempty"`
	Enabled     *bool    `json:"enabled,omitempty"`
}

// On reports whether the webhook is enabled (the default).
func (w *Webhook) On() bool { return w.Enabled == nil || *w.Enabled }

// Wants reports whether the webhook receives alert a.
func (w *Webhook) Wants(a *Alert) bool {
	if !w.On() || (w.Fleet != "" && w.Fleet != a.Fleet) {
		return false
	}
	if len(w.Types) > 0 && !slices.Contains(w.Types, a.Type) {
		return false
	}
	if w.MinSeverity != "" && a.Severity.Rank() > w.MinSeverity.Rank() {
		return false
	}
	return true
}

// Rule kinds.
const (
	KindOverspeed   = "overspeed"
	KindHarshAccel  = "harsh_acceleration"
	KindHarshBrake  = "harsh_braking"
	KindHarshCorner = "harsh_cornering"
	KindOverheat    = "engine_overheat"
	KindRPM         = "rpm_redline"
	KindAirPressure = "air_pressure_low"
	KindBatteryLow  = "battery_low"
	KindBatteryHigh = "battery_high"
	KindFuelDrop    = "fuel_drop"
	KindIdling      = "idling"
	KindIgnition    = "ignition"
	KindSilence     = "silence"
	KindImplausible = "implausible_fix"
	KindGeofence    = "geofence"
)

// Kinds lists every rule kind.
var Kinds = []string{KindOverspeed, KindHarshAccel, KindHarshBrake, KindHarshCorner, KindOverheat, KindRPM,
	KindAirPressure, KindBatteryLow, KindBatteryHigh, KindFuelDrop, KindIdling, KindIgnition, KindSilence,
	KindImplausible, KindGeofence}

// Fence events.
const (
	FenceEnter   = "enter"
	FenceExit    = "exit"
	FenceDwell   = "dwell"
	FenceInside  = "inside"
	FenceOutside = "outside"
)

// Duration is a time.Duration that JSON writes as "30s" and reads from such
// a string or from a number of seconds.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30s", "1h30m" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want a Go duration such as \"30s\" or \"10m\"", s)
		}
		*d = Duration(v)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string such as \"30s\" or a number of seconds", b)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Ms returns the duration in milliseconds.
func (d Duration) Ms() int64 { return time.Duration(d).Milliseconds() }

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ValidID reports whether id is a valid rule, fence or webhook id: 1-128 of
// A-Z a-z 0-9 . _ : -, starting with a letter or digit.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Limits of a rule set, so that one bad import cannot exhaust the engine.
const (
	MaxRules        = 10_000
	MaxFences       = 100_000
	MaxFenceVertex  = 100_000 // vertices of one fence
	MaxWebhooks     = 1_000
	maxSettingsSize = 16 << 10
)

// Validate checks the rule set: ids, kinds, settings, geometries,
// webhooks. Every problem is reported, each naming the object.
func (rs *RuleSet) Validate() error {
	errs := rs.validateExceptFences()
	fences := map[string]bool{}
	for i := range rs.Geofences {
		f := &rs.Geofences[i]
		if err := f.Check(); err != nil {
			errs = append(errs, err)
			continue
		}
		if fences[f.ID] {
			errs = append(errs, fmt.Errorf("geofence %q: id used twice", f.ID))
		}
		fences[f.ID] = true
	}
	return errors.Join(errs...)
}

// validateExceptFences checks everything but the fences' geometry.
func (rs *RuleSet) validateExceptFences() []error {
	var errs []error
	if len(rs.Rules) > MaxRules {
		errs = append(errs, fmt.Errorf("rules: %d, at most %d", len(rs.Rules), MaxRules))
	}
	if len(rs.Geofences) > MaxFences {
		errs = append(errs, fmt.Errorf("geofences: %d, at most %d", len(rs.Geofences), MaxFences))
	}
	if len(rs.Webhooks) > MaxWebhooks {
		errs = append(errs, fmt.Errorf("webhooks: %d, at most %d", len(rs.Webhooks), MaxWebhooks))
	}
	seen := map[string]bool{}
	for i := range rs.Rules {
		r := &rs.Rules[i]
		if err := r.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[r.ID] {
			errs = append(errs, fmt.Errorf("rule %q: id used twice", r.ID))
		}
		seen[r.ID] = true
	}
	hooks := map[string]bool{}
	for i := range rs.Webhooks {
		w := &rs.Webhooks[i]
		if err := w.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if hooks[w.ID] {
			errs = append(errs, fmt.Errorf("webhook %q: id used twice", w.ID))
		}
		hooks[w.ID] = true
	}
	return errs
}

// Validate checks one rule, and that its settings are those of its kind.
func (r *Rule) Validate() error {
	if !ValidID(r.ID) {
		return fmt.Errorf("rule %q: bad id: want 1-128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit", r.ID)
	}
	if !slices.Contains(Kinds, r.Kind) {
		return fmt.Errorf("rule %q: unknown kind %q (one of %s)", r.ID, r.Kind, strings.Join(Kinds, ", "))
	}
	if r.Severity != "" && !r.Severity.Valid() {
		return fmt.Errorf("rule %q: unknown severity %q (one of critical, major, minor, warning, info)", r.ID, r.Severity)
	}
	if len(r.Settings) > maxSettingsSize {
		return fmt.Errorf("rule %q: settings over %d bytes", r.ID, maxSettingsSize)
	}
	if len(bytes.TrimSpace(r.Settings)) > 0 && string(bytes.TrimSpace(r.Settings)) != "null" {
		// The rule's own settings over the kind's defaults must decode,
		// with no unknown field, into a valid profile entry.
		if _, err := resolveKind(r.Kind, [][]byte{r.Settings}); err != nil {
			return fmt.Errorf("rule %q (%s): settings: %w", r.ID, r.Kind, err)
		}
	}
	return nil
}

// Validate checks one webhook.
func (w *Webhook) Validate() error {
	if !ValidID(w.ID) {
		return fmt.Errorf("webhook %q: bad id", w.ID)
	}
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("webhook %q: url %q: want an absolute http(s) URL", w.ID, w.URL)
	}
	if u.User != nil {
		return fmt.Errorf("webhook %q: url: credentials in a URL end up in logs; sign with the secret instead", w.ID)
	}
	if len(w.Secret) < 16 {
		return fmt.Errorf("webhook %q: secret: at least 16 characters, to sign the deliveries", w.ID)
	}
	if w.MinSeverity != "" && !w.MinSeverity.Valid() {
		return fmt.Errorf("webhook %q: unknown min_severity %q", w.ID, w.MinSeverity)
	}
	return nil
}

// ParseRuleSet reads a rule set (JSON), refusing unknown fields, and
// validates it.
func ParseRuleSet(b []byte) (*RuleSet, error) {
	var rs RuleSet
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rs); err != nil {
		return nil, fmt.Errorf("rule set: %w", err)
	}
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	return &rs, nil
}
