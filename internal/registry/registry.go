// Package registry is drover's device registry as the data path holds it:
// which devices may connect, with which token, in which state, and what is
// known of them (fleet, vehicle class, region). The frontend authenticates
// devices against it and the router enriches readings with it. Only
// SHA-256 hashes of tokens are held, compared in constant time.
//
// It comes from one of two sources, kept current by a Store:
//
//   - a JSON file that operators edit or generate (docs/registry.md: its
//     format, the rules, how a device gets its token), reloaded on change;
//   - the control plane's change feed (NewFollower; docs/api.md "Following
//     the control plane"): a snapshot, then long-polled changes, a new
//     snapshot when the API asks (410), backoff while it is down; the last
//     copy is kept in a cache file (versioned, checksummed), so that a
//     frontend or router restarted while the API is down still serves, and
//     resumes from the cached version.
//
// A Registry is immutable and compact (view.go): an O(1) lookup with no
// lock, about 100 bytes per device at a million. A change makes a new one
// and the Store swaps a pointer; subscribers (a frontend closing the
// connections of a suspended device) are told which devices changed.
//
// Each entry is checked on its own (Validate): a device id by
// telemetry.ValidateDeviceID, the labels by telemetry.ValidateLabel, the
// token hash as 64 hex characters. An entry that breaks a rule, and every
// entry of an id listed twice, is refused alone: its device cannot connect,
// and the others can. A file that does not parse is refused whole. Refused
// entries are listed by Registry.Rejected, logged and counted by Store
// (drover_registry_rejected_entries), and printed by drover registry check.
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/telemetry"
)

// Device is one registered device.
type Device struct {
	// ID is the device's identity as it presents itself: 1 to 128 bytes of
	// A-Z a-z 0-9 . _ - :, starting with a letter or a digit
	// (telemetry.ValidateDeviceID).
	ID string `json:"id"`
	// TokenSHA256 is the hex SHA-256 of the device's secret token.
	TokenSHA256 string `json:"token_sha256"`
	// Fleet, Class and Region are what the router adds to each reading:
	// each empty, or up to 128 bytes of UTF-8 without control characters or
	// backslashes (telemetry.ValidateLabel).
	Fleet  string `json:"fleet,omitempty"`
	Class  string `json:"class,omitempty"`
	Region string `json:"region,omitempty"`
	// State is the device's lifecycle state, as Lookup and Authorize
	// report it. Not in the file: a file lists active devices only.
	State State `json:"-"`
}

// File is the registry file's shape:
//
//	{"devices": [{"id": "truck-0001", "token_sha256": "9f86d0…", "fleet": "acme",
//	              "class": "truck", "region": "gauteng"}]}
type File struct {
	Devices []Device `json:"devices"`
}

// Rejection is a registry entry refused at load: its device cannot connect.
type Rejection struct {
	// Index is the entry's position in the file's list of devices,
	// counting from 0.
	Index int
	// ID is the entry's id as written.
	ID string
	// Reason names the rule the entry breaks.
	Reason string
}

// String formats the rejection for logs and drover registry check:
// device 3 "tail\\": invalid device id: ...
func (r Rejection) String() string {
	return fmt.Sprintf("device %d %q: %s", r.Index, r.ID, r.Reason)
}

// HashToken returns the hex SHA-256 of a token, as the file stores it
// (see [auth.HashHex]).
func HashToken(token string) string { return auth.HashHex(token) }

// Validate checks one entry by itself: its id (telemetry.ValidateDeviceID),
// its token hash (64 hex characters) and its labels
// (telemetry.ValidateLabel). Whether the id is listed twice is a matter of
// the whole list (see Build).
func Validate(d Device) error {
	if err := telemetry.ValidateDeviceID(d.ID); err != nil {
		return err
	}
	if _, err := auth.ParseDigest(d.TokenSHA256); err != nil {
		return errors.New("token_sha256 must be 64 hex characters (the SHA-256 of the token)")
	}
	for _, l := range [...]struct{ name, v string }{{"fleet", d.Fleet}, {"class", d.Class}, {"region", d.Region}} {
		if err := telemetry.ValidateLabel(l.v); err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
	}
	return nil
}

// Build builds a registry from devices. An entry that Validate refuses, and
// every entry of an id listed more than once (which of them is the device
// cannot be told), is left out and listed in Rejected; the other devices are
// in the registry, active.
func Build(devices []Device) *Registry {
	b := newBuilder()
	s := b.startSnapshot(len(devices))
	var rejected []Rejection
	where := make(map[string][]int, len(devices))
	for i, d := range devices {
		where[d.ID] = append(where[d.ID], i)
	}
	for i, d := range devices {
		if err := Validate(d); err != nil {
			rejected = append(rejected, Rejection{Index: i, ID: d.ID, Reason: err.Error()})
			continue
		}
		if at := where[d.ID]; len(at) > 1 {
			rejected = append(rejected, Rejection{Index: i, ID: d.ID, Reason: fmt.Sprintf(
				"id listed %d times (devices %s): every entry of it is refused", len(at), joinInts(at))})
			continue
		}
		h, _ := auth.ParseDigest(d.TokenSHA256) // checked by Validate
		s.add(Change{ID: d.ID, State: StateActive, Labels: Labels{Fleet: d.Fleet, Class: d.Class, Region: d.Region},
			HasToken: true, Token: h})
	}
	r := s.finish("", 0)
	r.rejected = rejected
	return r
}

// New builds a registry from devices and fails, naming every refused entry,
// when Build would refuse any: for registries built in code, where a bad
// entry is a bug.
func New(devices []Device) (*Registry, error) {
	r := Build(devices)
	if len(r.rejected) > 0 {
		errs := make([]error, len(r.rejected))
		for i, rj := range r.rejected {
			errs[i] = errors.New(rj.String())
		}
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// Load reads a registry file. A file that cannot be read or parsed (bad
// JSON, an unknown field) is an error; entries that break a rule are
// refused one by one, as Build does, and listed by Rejected.
func Load(path string) (*Registry, error) {
	devs, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Build(devs), nil
}

// ReadFile reads the entries of a registry file as written, refused ones
// included (for tools that edit the file; Load is what serves devices).
func ReadFile(path string) ([]Device, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	var f File
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse registry %s: %w", path, err)
	}
	return f.Devices, nil
}

// Write writes a registry file atomically and durably
// (internal/atomicfile: temp file, fsync, rename, folder fsync). A file it
// replaces keeps its permissions (a frontend running as another user must
// still read it); a new one is readable by its owner only: it holds token
// hashes.
func Write(path string, devices []Device) error {
	b, err := json.MarshalIndent(File{Devices: devices}, "", "  ")
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	perm := os.FileMode(0o600)
	if st, err := os.Stat(path); err == nil {
		perm = st.Mode().Perm()
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), perm); err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return nil
}
