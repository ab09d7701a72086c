// Package registry is drover's device registry: which devices may connect,
// with which token, and what is known of them (fleet, vehicle class,
// region). For now it is a JSON file that operators edit or generate; the
// frontend authenticates devices against it and the router enriches
// readings with it. Only SHA-256 hashes of tokens are stored, and tokens are
// compared in constant time.
package registry

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// Device is one registered device.
type Device struct {
	// ID is the device's identity as it presents itself.
	ID string `json:"id"`
	// TokenSHA256 is the hex SHA-256 of the device's secret token.
	TokenSHA256 string `json:"token_sha256"`
	// Fleet, Class and Region are what the router adds to each reading.
	Fleet  string `json:"fleet,omitempty"`
	Class  string `json:"class,omitempty"`
	Region string `json:"region,omitempty"`
}

// File is the registry file's shape:
//
//	{"devices": [{"id": "truck-0001", "token_sha256": "9f86d0…", "fleet": "acme",
//	              "class": "truck", "region": "gauteng"}]}
type File struct {
	Devices []Device `json:"devices"`
}

// Registry is an immutable, loaded registry.
type Registry struct {
	byID map[string]*entry
}

type entry struct {
	Device
	hash [sha256.Size]byte
}

// Errors of Authenticate.
var (
	ErrUnknownDevice = errors.New("unknown device")
	ErrBadToken      = errors.New("bad token")
)

// HashToken returns the hex SHA-256 of a token, as the file stores it.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// New builds a registry from devices, checking ids and hashes.
func New(devices []Device) (*Registry, error) {
	r := &Registry{byID: make(map[string]*entry, len(devices))}
	for i, d := range devices {
		if d.ID == "" || len(d.ID) > 128 || strings.ContainsAny(d.ID, " \t\r\n") {
			return nil, fmt.Errorf("device %d: id %q: want 1-128 characters without spaces", i, d.ID)
		}
		if _, dup := r.byID[d.ID]; dup {
			return nil, fmt.Errorf("device %q listed twice", d.ID)
		}
		b, err := hex.DecodeString(d.TokenSHA256)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("device %q: token_sha256 must be 64 hex characters", d.ID)
		}
		e := &entry{Device: d}
		copy(e.hash[:], b)
		r.byID[d.ID] = e
	}
	return r, nil
}

// Load reads a registry file.
func Load(path string) (*Registry, error) {
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
	r, err := New(f.Devices)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return r, nil
}

// Write writes a registry file atomically and durably
// (internal/atomicfile: temp file, fsync, rename, folder fsync), readable by
// its owner only: it holds token hashes.
func Write(path string, devices []Device) error {
	b, err := json.MarshalIndent(File{Devices: devices}, "", "  ")
	if err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	return nil
}

// Len returns the number of devices.
func (r *Registry) Len() int { return len(r.byID) }

// Lookup returns the device with id.
func (r *Registry) Lookup(id string) (Device, bool) {
	e, ok := r.byID[id]
	if !ok {
		return Device{}, false
	}
	return e.Device, true
}

// Authenticate checks a device's token in constant time.
func (r *Registry) Authenticate(id, token string) (Device, error) {
	e, ok := r.byID[id]
	h := sha256.Sum256([]byte(token))
	if !ok {
		return Device{}, ErrUnknownDevice
	}
	if subtle.ConstantTimeCompare(h[:], e.hash[:]) != 1 {
		return Device{}, ErrBadToken
	}
	return e.Device, nil
}
