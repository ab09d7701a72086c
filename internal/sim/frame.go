package sim

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The binary uplink is written straight from the outbox's samples with protowire: the same
// bytes protobuf-go's Marshal writes for the Readings frameReading.fill builds (fields in number
// order, proto3 seq and time_ms left out when zero, every optional field present but
// pneumatic_pressure_kpa and extra when the sample has none), without building messages or
// walking protobuf's reflection tables. It was a quarter of the simulator's CPU in the
// throughput run. Extra entries go in a fixed order (protobuf-go's map order is random).
// TestAppendUplinkSamples holds it to protobuf-go's encoding, field for field.

// Reading field numbers (telemetry.proto).
const (
	fnSeq protowire.Number = iota + 1
	fnTimeMs
	fnLatE7
	fnLonE7
	fnAltitudeM
	fnHeadingDeg
	fnSpeedKmh
	fnSatellites
	fnIgnition
	fnEngineTempC
	fnEngineRPM
	fnFuelLevelPct
	fnOdometerKm
	fnBatteryVoltageV
	fnBatteryCurrentA
	fnPneumaticPressureKpa
	fnExtra
)

// Uplink.readings.
const fnReadings protowire.Number = 1

// eventKeys are the extra keys of sample.events' bits, in the order they are written.
var eventKeys = [...]struct {
	bit uint8
	key string
}{{evHarshBraking, ExtraHarshBraking}, {evOverheating, ExtraOverheating}, {evSpeeding, ExtraSpeeding}}

// appendUplink appends the binary Uplink of the k outbox readings from index i to dst.
func appendUplink(dst []byte, out *outbox, i, k int) []byte {
	for j := range k {
		dst = protowire.AppendTag(dst, fnReadings, protowire.BytesType)
		// A reading is ~80 bytes: reserve one byte for its length, and move it along in the
		// rare case (events in extra) it needs more.
		at := len(dst)
		dst = append(dst, 0)
		dst = appendReading(dst, out.at(i+j))
		n := len(dst) - at - 1
		if n < 0x80 {
			dst[at] = byte(n)
			continue
		}
		w := protowire.SizeVarint(uint64(n))
		dst = append(dst, make([]byte, w-1)...)
		copy(dst[at+w:], dst[at+1:at+1+n])
		protowire.AppendVarint(dst[at:at], uint64(n))
	}
	return dst
}

// appendReading appends the Reading encoding of s (without its tag and length) to dst.
func appendReading(b []byte, s *sample) []byte {
	if s.seq != 0 {
		b = protowire.AppendTag(b, fnSeq, protowire.VarintType)
		b = protowire.AppendVarint(b, s.seq)
	}
	if s.timeMs != 0 {
		b = protowire.AppendTag(b, fnTimeMs, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s.timeMs))
	}
	b = protowire.AppendTag(b, fnLatE7, protowire.VarintType)
	b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(s.latE7)))
	b = protowire.AppendTag(b, fnLonE7, protowire.VarintType)
	b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(s.lonE7)))
	b = appendFloat(b, fnAltitudeM, s.altM)
	b = appendFloat(b, fnHeadingDeg, s.headingDeg)
	b = appendFloat(b, fnSpeedKmh, s.speedKmh)
	b = protowire.AppendTag(b, fnSatellites, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.sats))
	b = protowire.AppendTag(b, fnIgnition, protowire.VarintType)
	b = protowire.AppendVarint(b, protowire.EncodeBool(s.ignition))
	b = appendFloat(b, fnEngineTempC, s.engTempC)
	b = appendFloat(b, fnEngineRPM, s.rpm)
	b = appendFloat(b, fnFuelLevelPct, s.fuelPct)
	b = protowire.AppendTag(b, fnOdometerKm, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, math.Float64bits(s.odoKm))
	b = appendFloat(b, fnBatteryVoltageV, s.battV)
	b = appendFloat(b, fnBatteryCurrentA, s.battA)
	if s.hasAirbag {
		b = appendFloat(b, fnPneumaticPressureKpa, s.pneuKpa)
	}
	if s.events != 0 {
		for _, e := range eventKeys {
			if s.events&e.bit == 0 {
				continue
			}
			// A map entry: key (1) and value (2), as a message.
			b = protowire.AppendTag(b, fnExtra, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(len(e.key))+1+8))
			b = protowire.AppendTag(b, 1, protowire.BytesType)
			b = protowire.AppendString(b, e.key)
			b = protowire.AppendTag(b, 2, protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, math.Float64bits(1))
		}
	}
	return b
}

func appendFloat(b []byte, num protowire.Number, v float32) []byte {
	b = protowire.AppendTag(b, num, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, math.Float32bits(v))
}
