package sim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/drover-telemetry/drover/internal/registry"
)

// Fleets, classes and regions assigned round-robin to simulated devices.
var (
	fleets  = []string{"acme-haulage", "karoo-freight", "cape-transit", "zambezi-logistics"}
	classes = []string{"truck", "bus", "car"}
	regions = []string{"gauteng", "western-cape", "kwazulu-natal", "botswana", "namibia"}
)

// Token returns the token of deviceID under seed: the first 32 hex characters of
// HMAC-SHA256(seed, deviceID). The simulator and the registry it writes agree on it, and a
// registry cannot be turned back into tokens without the seed.
func Token(seed, deviceID string) string {
	m := hmac.New(sha256.New, []byte(seed))
	m.Write([]byte(deviceID))
	return hex.EncodeToString(m.Sum(nil))[:32]
}

// DeviceID returns the id of the i-th simulated device: prefix followed by i in at least six
// digits ("dev-000042"), so that ids sort in device order.
func DeviceID(prefix string, i int) string {
	s := strconv.Itoa(i)
	if len(s) < 6 {
		s = "000000"[len(s):] + s
	}
	return prefix + s
}

// Devices returns the registry entries of cfg's devices: ids, token hashes, and a fleet, a vehicle
// class and a region each, assigned round-robin from small fixed lists.
func Devices(cfg Config) []registry.Device {
	cfg = cfg.withDefaults()
	out := make([]registry.Device, 0, max(cfg.Devices, 0))
	for k := range max(cfg.Devices, 0) {
		i := cfg.DeviceOffset + k
		id := DeviceID(cfg.IDPrefix, i)
		class := classOf(i)
		if cfg.Script != nil && cfg.Script.Class != "" {
			class = cfg.Script.Class // a scripted trip's vehicle
		}
		out = append(out, registry.Device{
			ID:          id,
			TokenSHA256: registry.HashToken(Token(cfg.TokenSeed, id)),
			Fleet:       fleets[i%len(fleets)],
			Class:       class,
			Region:      regions[i%len(regions)],
		})
	}
	return out
}

// classOf is the vehicle class of device i.
func classOf(i int) string { return classes[i%len(classes)] }

// WriteRegistry writes a registry file holding cfg's devices (see Devices), so that a frontend
// started with it accepts the simulated fleet.
// Entries the registry would refuse (an id prefix outside the device id rule) are an error, and
// nothing is written.
func WriteRegistry(path string, cfg Config) error {
	devs := Devices(cfg)
	if _, err := registry.New(devs); err != nil {
		return fmt.Errorf("write sim registry: %w", err)
	}
	if err := registry.Write(path, devs); err != nil {
		return fmt.Errorf("write sim registry: %w", err)
	}
	return nil
}
